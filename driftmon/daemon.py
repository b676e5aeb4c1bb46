"""``driftmon run``: the Kafka daemon around the core: start, loop, ordered shutdown.

The loop polls a batch and processes it (:mod:`driftmon.processing`: detections go to
the drift lifecycle and the sinks), publishes the version transitions that changed
(:mod:`driftmon.sinks.transitions`), refreshes metrics and resolves quiet drifts every few
seconds, and checkpoints (:mod:`driftmon.partitions`) every N events or T seconds.

Exit codes: 0 after a clean stop (SIGTERM or SIGINT, at any moment, bootstrap included);
1 on a fatal error (Kafka still failing after ``KAFKA_RETRY_DEADLINE_SECONDS`` of retries,
``state.dir`` no longer readable or writable, an unexpected exception); 2 on a
configuration error found at start-up (a ``state.topic`` that is not compacted included).
Every fatal path logs one JSON line with its cause
and closes the consumer.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import structlog
from kafka import TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from driftmon import kafka as kafka_io
from driftmon.alertmanager import AlertSender
from driftmon.checkpoint import (
    CheckpointDirectoryError,
    CheckpointStore,
    DirectoryCheckpointStore,
    KafkaCheckpointStore,
    StateTopicError,
)
from driftmon.core import compiled_label
from driftmon.core.monitor import Detection, Monitor
from driftmon.embedding import EmbeddingPath
from driftmon.kafka import KAFKA_RETRY_DEADLINE_SECONDS
from driftmon.metrics import Metrics, serve
from driftmon.partitions import Listener, Partitions, PartitionState
from driftmon.processing import Processor
from driftmon.repartition import RepartitionStage
from driftmon.server import Route
from driftmon.settings import Settings
from driftmon.sinks import CallbackSink, build_sinks
from driftmon.sinks.transitions import TransitionPublisher

__all__ = ["EXIT_CONFIG", "EXIT_FATAL", "EXIT_OK", "Daemon", "PartitionState", "run"]

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2
SHUTDOWN_TIMEOUT = 30.0
METRICS_REFRESH_SECONDS = 5.0


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        store: CheckpointStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        store = store or _store(settings)
        self.kafka = Partitions(settings, self.metrics, store, clock, lambda: self.should_exit)
        self.kafka.emitted_lookup = lambda restored: kafka_io.emitted_detections(
            kafka_io.client_config(settings.kafka), settings.kafka.detections_topic, restored
        )
        self.alerts = AlertSender(settings.alertmanager, self.metrics, clock=clock)
        self._live = CallbackSink()
        self.sinks = build_sinks(
            settings,
            self.metrics,
            alerts=self.alerts,
            producer=lambda: self.processor.producer,
            live=self._live,
        )
        self._embedding = (
            EmbeddingPath(settings, self.metrics) if settings.embeddings.enabled else None
        )
        self.processor = Processor(
            settings, self.metrics, self.kafka, self.sinks, self._embedding, clock
        )
        self.transitions = TransitionPublisher(
            settings, self.metrics, self.alerts, lambda: self.processor.producer, clock
        )
        # kafka.repartition_topic: inputs re-keyed by endpoint on a thread of this process,
        # and monitoring consumes the re-keyed topic (docs/scaling.md).
        target = settings.kafka.repartition_topic
        self.repartition = (
            RepartitionStage(settings.kafka, settings.input, target, self.metrics, self.registry)
            if target
            else None
        )
        # The steps of the loop; also what tests and benchmarks call (or wrap) one by one.
        self.process_batch = self.processor.process_batch
        self.refresh_metrics = self.processor.refresh_metrics
        self.checkpoint = self.kafka.checkpoint
        self._new_state = self.processor.new_state
        self._activate = self.processor.activate
        self._remove_key_series = self.processor.remove_key_series
        self.should_exit = False
        self._last_poll = 0.0
        self._last_refresh = 0.0
        self._state_failed = False  # state.dir unusable: no final checkpoint

    # -- the parts, as tests, the demo and the benchmarks reach them --------------------
    @property
    def partitions(self) -> dict[TopicPartition, PartitionState]:
        return self.kafka.states

    @property
    def _consumer(self) -> Any:
        return self.kafka.consumer

    @_consumer.setter
    def _consumer(self, consumer: Any) -> None:
        self.kafka.consumer = consumer

    @property
    def _producer(self) -> Any:
        return self.processor.producer

    @_producer.setter
    def _producer(self, producer: Any) -> None:
        self.processor.producer = producer

    @property
    def on_detection(self) -> Callable[[Detection], None] | None:
        """Called with each detection (the demo's live view)."""
        return self._live.callback

    @on_detection.setter
    def on_detection(self, callback: Callable[[Detection], None] | None) -> None:
        self._live.callback = callback

    # -- signals and health -----------------------------------------------------------
    def request_exit(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.should_exit = True

    def ready(self) -> bool:
        """Polling, owning partitions, and every partition able to make progress (its offset
        checked against the log)."""
        stage = self.repartition
        return (
            bool(self.partitions)
            and not self.kafka.unverified
            and time.monotonic() - self._last_poll < 30.0
            and (stage is None or (stage.error is None and stage.running))
        )

    def monitors(self) -> Iterator[tuple[TopicPartition, Monitor]]:
        for tp, state in list(self.partitions.items()):
            yield tp, state.pipeline.monitor

    # -- lifecycle ------------------------------------------------------------------
    def run(self) -> int:
        k = self.settings.kafka
        server, _ = serve(
            self.registry,
            self.settings.metrics.host,
            self.settings.metrics.port,
            self.ready,
            routes={"/transitions": Route(self.transitions.response)},
        )
        monitored = [k.repartition_topic] if k.repartition_topic else list(k.topics)
        log.info(
            "starting",
            bootstrap=k.bootstrap_servers,
            topics=k.topics,
            monitored_topics=monitored,
            group=k.group_id,
            metrics_port=server.server_address[1],
            compiled_core=compiled_label(),
        )
        code = EXIT_OK
        try:
            if self._connect() and self._start_repartition():
                kafka_io.subscribe(self._consumer, monitored, Listener(self.kafka))
                self._loop()
        except StateTopicError as exc:
            self._state_failed = True
            log.error("stopping: state.topic unusable", error=str(exc))
            code = EXIT_CONFIG
        except CheckpointDirectoryError as exc:
            self._state_failed = True
            log.error(
                "stopping: state.dir unusable",
                error=str(exc),
                hint="free space or fix state.dir; the daemon resumes from its last checkpoint",
            )
            code = EXIT_FATAL
        except KafkaError as exc:
            log.error(
                "stopping: kafka error",
                error=str(exc)[:500],
                retriable=kafka_io.retriable(exc),
                phase="running" if self._consumer is not None else "bootstrap",
                retried_for_seconds=(
                    (
                        KAFKA_RETRY_DEADLINE_SECONDS
                        if self._consumer is not None
                        else self.settings.kafka.bootstrap_timeout_seconds
                    )
                    if kafka_io.retriable(exc)
                    else 0
                ),
            )
            code = EXIT_FATAL
        except Exception as exc:
            log.error("stopping: unexpected error", error=repr(exc)[:500], exc_info=True)
            code = EXIT_FATAL
        finally:
            self._shutdown(server, code)
        return code

    def _start_repartition(self) -> bool:
        """Start the repartition stage (if configured) and wait for its topic; False when
        an exit was requested first. A stage that fails stops the daemon (exit 1): it
        restarts from the committed input offsets."""
        stage = self.repartition
        if stage is None:
            return True
        stage.start()
        while not stage.topic_ready.wait(0.2):
            if stage.error is not None:
                raise stage.error
            if self.should_exit:
                return False
        return True

    def _connect(self) -> bool:
        """Producer and consumer, built on a helper thread so that a signal ends the wait
        for an unreachable broker; False when an exit was requested first."""
        k = self.settings.kafka
        timeout_ms = int(k.bootstrap_timeout_seconds * 1000)
        built: dict[str, Any] = {}

        def build() -> None:
            try:
                built["producer"] = kafka_io.make_producer(k, bootstrap_timeout_ms=timeout_ms)
                # The re-keyed topic is read from its start when the group is new: what
                # the stage produced before monitoring joined is not skipped.
                monitor = (
                    k.model_copy(update={"auto_offset_reset": "earliest"})
                    if k.repartition_topic
                    else k
                )
                built["consumer"] = kafka_io.make_consumer(monitor, bootstrap_timeout_ms=timeout_ms)
                if isinstance(self.kafka.store, KafkaCheckpointStore):
                    self.kafka.store.connect(bootstrap_timeout_ms=timeout_ms)
            except BaseException as exc:  # re-raised on the main thread
                built["error"] = exc

        worker = threading.Thread(target=build, name="driftmon-kafka-connect", daemon=True)
        worker.start()
        while worker.is_alive():
            if self.should_exit:
                log.info("exit requested while connecting to kafka")
                return False
            worker.join(timeout=0.2)
        if "error" in built:
            raise built["error"]
        self._producer, self._consumer = built["producer"], built["consumer"]
        return True

    def _loop(self) -> None:
        k = self.settings.kafka
        partitions = self.kafka
        while not self.should_exit:
            if self.repartition is not None and self.repartition.error is not None:
                raise self.repartition.error
            # A batch kafka-python cannot decompress or parse is skipped and counted, not
            # raised: raised, it would stop the daemon and meet it again on restart.
            batch = kafka_io.poll_records(
                self._consumer,
                k.poll_timeout_ms,
                k.max_poll_records,
                kafka_io.skip_undecodable(self.metrics, self.partitions),
            )
            self._last_poll = time.monotonic()
            if partitions.listener_error is not None:
                raise partitions.listener_error
            partitions.verify_assigned()
            stale = partitions.check_positions()
            self.transitions.before_batch(self.partitions)
            if batch:
                n = self.process_batch(
                    {tp: r for tp, r in batch.items() if tp not in stale} if stale else batch
                )
                log.debug("batch", records=n)
            # Before any checkpoint: the producer flush that precedes it covers the records.
            self.transitions.publish(self.partitions)
            if self._embedding is not None:
                self.processor.apply_embeddings()
            now = time.monotonic()
            if now - self._last_refresh >= METRICS_REFRESH_SECONDS:
                self.refresh_metrics()
                self.transitions.refresh(self.partitions)
                self._last_refresh = now
            self.sinks.tick()
            if partitions.checkpoint_due():
                self.checkpoint()

    def _shutdown(self, server: Any, code: int) -> None:
        """Save what can be saved and close everything, in order; never raises (a failure
        here is logged as one line and the exit code stands)."""
        watchdog = threading.Timer(SHUTDOWN_TIMEOUT, lambda: os._exit(EXIT_FATAL))
        watchdog.daemon = True
        watchdog.start()
        self.should_exit = True  # retries give up at once from here on
        steps: list[tuple[str, Callable[[], object]]] = []
        stage = self.repartition
        if stage is not None:
            # First: it finishes its poll (produced, acknowledged, committed) and closes.
            steps.append(("stop repartition stage", lambda: stage.stop(timeout=15)))
        if self._consumer is not None:
            steps.append(("refresh metrics", self.refresh_metrics))
            steps.append(("publish transitions", lambda: self.transitions.publish(self.partitions)))
            if not self._state_failed:
                steps.append(("final checkpoint", self.checkpoint))
            # Everything is saved and committed (or cannot be): the revoke callback of close()
            # has nothing left to do.
            steps.append(("clear partitions", self.partitions.clear))
            steps.append(("close consumer", lambda: self._consumer.close(autocommit=False)))
        if self._producer is not None:
            steps.append(("close producer", lambda: self._producer.close(timeout=10)))
        if isinstance(self.kafka.store, KafkaCheckpointStore):
            steps.append(("close state producer", self.kafka.store.close))
        if self._embedding is not None:
            embedding = self._embedding
            steps.append(("close embedding worker", lambda: embedding.worker.close(timeout=5)))
        steps.append(("close sinks", lambda: self.sinks.close(timeout=5)))
        try:
            for name, step in steps:
                try:
                    step()
                except Exception as exc:
                    log.warning("shutdown step failed", step=name, error=repr(exc)[:300])
        finally:
            server.shutdown()
            server.server_close()
            watchdog.cancel()
            log.info("stopped", exit_code=code)


def _store(settings: Settings) -> CheckpointStore:
    s = settings.state
    if s.backend == "kafka":
        return KafkaCheckpointStore(
            kafka_io.client_config(settings.kafka),
            topic=s.topic,
            group=settings.kafka.group_id,
            chunk_bytes=s.chunk_bytes,
            topic_partitions=s.topic_partitions,
            replication_factor=s.replication_factor,
        )
    return DirectoryCheckpointStore(s.dir)


def run(settings: Settings) -> int:
    """Entry point of ``driftmon run``: signals set the exit flag, the loop ends cleanly.

    The handlers go in first: a signal while the embedding model loads or the broker is
    unreachable still stops the daemon cleanly, with exit code 0.
    """
    from driftmon.embedding import EmbeddingUnavailable

    early: list[int] = []

    def before_daemon(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    signal.signal(signal.SIGTERM, before_daemon)
    signal.signal(signal.SIGINT, before_daemon)
    try:
        daemon = Daemon(settings)
    except EmbeddingUnavailable as exc:
        log.error(
            "embeddings unavailable",
            error=str(exc),
            hint="install them or set DRIFTMON_EMBEDDINGS__ENABLED=false",
        )
        return EXIT_CONFIG
    except CheckpointDirectoryError as exc:
        log.error("state.dir unusable", error=str(exc), hint="set state.dir to a writable volume")
        return EXIT_CONFIG
    signal.signal(signal.SIGTERM, daemon.request_exit)
    signal.signal(signal.SIGINT, daemon.request_exit)
    if early:
        daemon.request_exit()
    return daemon.run()
