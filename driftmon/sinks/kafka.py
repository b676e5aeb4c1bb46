"""Detections as records on the detections topic (``kafka.detections_topic``), keyed
``endpoint|model``, each with its stable ``detection_id`` (in the JSON and in the
``driftmon-detection-id`` header). A detection re-found while records after a restored
checkpoint are read again is not added to the sinks at all (driftmon.processing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from driftmon import kafka as kafka_io
from driftmon.core.monitor import Detection
from driftmon.metrics import Metrics
from driftmon.sinks import Origin, Sink


class DetectionTopicSink(Sink):
    """Produces through the daemon's producer (``producer()``: it exists once connected);
    a failed send is counted and logged, never raised."""

    def __init__(self, topic: str, producer: Callable[[], Any], metrics: Metrics) -> None:
        self.topic = topic
        self.producer = producer
        self.metrics = metrics

    def add(self, detection: Detection, origin: Origin) -> None:
        kafka_io.send_detection(
            self.producer(),
            self.topic,
            key=f"{detection.endpoint}|{detection.model}".encode(),
            value=kafka_io.detection_record(
                detection, topic=origin.topic, partition=origin.partition, offset=origin.offset
            ),
            on_error=kafka_io.produce_failed(
                self.metrics, self.topic, origin.topic, origin.partition, origin.offset
            ),
            detection_id=detection.detection_id,
        )

    def flush(self) -> None:
        """Detections of the records about to be checkpointed become durable (raises the
        producer's error: the checkpoint retries or is skipped)."""
        producer = self.producer()
        if producer is not None:
            producer.flush(timeout=kafka_io.PRODUCER_FLUSH_TIMEOUT)
