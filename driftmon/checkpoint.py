"""Per-partition checkpoints: a Monitor snapshot, the drifts active in it, and the Kafka offset
they reflect.

State and offset live in one record, written atomically, because they must never disagree:
state ahead of its offset would count records twice after a restart, state behind it would
skip them. The daemon saves the checkpoint first and only then commits the offset to Kafka, so
a crash between the two loses nothing: the checkpoint's offset, not Kafka's, says where to resume.

``CheckpointStore`` is deliberately small (load, save, delete by topic/partition) and a record's
bytes come from :func:`encode`/:func:`decode`. ``DirectoryCheckpointStore`` keeps one file per
partition; its directory must belong to one process (stale temp files are removed on start-up)
and be private (the state is a pickle). ``KafkaCheckpointStore`` (``state.backend: kafka``)
keeps them in a compacted topic so that any replica of the group can take a partition over:
key ``group/topic/partition``, value the same bytes (chunked when large), delete a tombstone.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     store = DirectoryCheckpointStore(Path(tmp))
...     store.save(Checkpoint("llm.outputs", 3, 42, b"state", written_at=1.5))
...     loaded = store.load("llm.outputs", 3)
>>> loaded.offset, loaded.state, loaded.written_at
(42, b'state', 1.5)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import struct
import tempfile
import time
import urllib.parse
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from driftmon.core import units
from driftmon.core.drifts import ActiveDrift, InvalidDriftEntry

__all__ = [
    "ActiveDrift",
    "Checkpoint",
    "CheckpointDirectoryError",
    "CheckpointFileError",
    "CheckpointStore",
    "CorruptCheckpointError",
    "DirectoryCheckpointStore",
    "KafkaCheckpointStore",
    "StateTopicError",
    "decode",
    "encode",
]

MAGIC: Final = b"DMCK"
# 2 added the active drifts; 3: their baseline and current values in the feature's own
# unit (driftmon.core.units), not log1p / 0-1. Versions 1 and 2 still load.
FORMAT_VERSION: Final = 3
_READABLE_VERSIONS: Final = (1, 2, 3)
# magic, format version, JSON header length, CRC-32 of the JSON header (state has its sha256)
_PREFIX: Final = struct.Struct(">4sHII")
_HEADER_FIELDS: Final = ("topic", "partition", "offset", "written_at", "state_sha256", "state_len")
SUFFIX: Final = ".dmck"
# quote() escapes '+', so no checkpoint file name can start with it (stale temp clean-up).
TEMP_PREFIX: Final = "+tmp-"
# Keeps names plus ".corrupt-<timestamp>" within the usual 255-byte file name limit.
_MAX_QUOTED_TOPIC: Final = 150

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    topic: str
    partition: int
    offset: int  # next offset to consume; the state reflects all records before it
    state: bytes  # Monitor.snapshot()
    written_at: float  # epoch seconds, passed in by the caller
    drifts: tuple[ActiveDrift, ...] = ()  # drifts active in ``state``; small, so in the header
    # The topic's id when saved (Kafka ≥ 2.8 brokers report one): a different id on restore
    # means the topic was recreated and the offset belongs to data that is gone. An optional
    # header field: older files and readers simply lack it.
    topic_id: str | None = None

    def __post_init__(self) -> None:
        if not self.topic or self.partition < 0 or self.offset < 0:
            raise ValueError(f"invalid checkpoint {self.topic!r}/{self.partition}@{self.offset}")


class CheckpointStore(Protocol):
    def load(self, topic: str, partition: int) -> Checkpoint | None: ...
    def save(self, checkpoint: Checkpoint) -> None: ...
    def delete(self, topic: str, partition: int) -> None: ...


class CorruptCheckpointError(ValueError):
    """The bytes are not a valid checkpoint for the expected topic and partition."""


class CheckpointDirectoryError(OSError):
    """The checkpoint directory cannot be created or written."""


class CheckpointFileError(CheckpointDirectoryError):
    """A checkpoint file cannot be read or written (a full disk, a directory or a file where
    the checkpoint should be, a volume gone read-only): the message names the path."""


def encode(checkpoint: Checkpoint) -> bytes:
    """Fixed prefix + JSON header + state bytes."""
    header = json.dumps(
        {
            # Also in the CRC-covered header: a flipped bit in the prefix's version must
            # not make a file read as an older format.
            "format": FORMAT_VERSION,
            "topic": checkpoint.topic,
            "partition": checkpoint.partition,
            "offset": checkpoint.offset,
            "written_at": checkpoint.written_at,
            "state_sha256": hashlib.sha256(checkpoint.state).hexdigest(),
            "state_len": len(checkpoint.state),
            "drifts": [drift.to_json() for drift in checkpoint.drifts],
            **({"topic_id": checkpoint.topic_id} if checkpoint.topic_id is not None else {}),
        },
        sort_keys=True,
        allow_nan=False,
    ).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header))
    return prefix + header + checkpoint.state


def decode(data: bytes, topic: str, partition: int) -> Checkpoint:
    """Parse and verify :func:`encode`'s output; raises :class:`CorruptCheckpointError`."""
    if len(data) < _PREFIX.size:
        raise CorruptCheckpointError(f"truncated prefix ({len(data)} bytes)")
    magic, version, header_len, header_crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptCheckpointError(f"bad magic {magic!r}")
    if version not in _READABLE_VERSIONS:
        raise CorruptCheckpointError(f"format version {version}, expected {FORMAT_VERSION}")
    state_start = _PREFIX.size + header_len
    if state_start > len(data):
        raise CorruptCheckpointError(f"header length {header_len} exceeds the file")
    raw_header = data[_PREFIX.size : state_start]
    if zlib.crc32(raw_header) != header_crc:
        raise CorruptCheckpointError("header CRC-32 mismatch")
    try:
        header = json.loads(raw_header)
        found_topic, found_partition, offset, written_at, sha256, state_len = (
            header[name] for name in _HEADER_FIELDS
        )
        raw_drifts = header["drifts"] if version >= 2 else []
        if not isinstance(raw_drifts, list):
            raise CorruptCheckpointError(f"drifts is {type(raw_drifts).__name__}, not a list")
        try:
            drifts = tuple(ActiveDrift.from_json(raw) for raw in raw_drifts)
        except InvalidDriftEntry as exc:
            raise CorruptCheckpointError(str(exc)) from exc
        if version < 3:
            drifts = tuple(_in_display_units(drift) for drift in drifts)
        if header.get("format", version if version < 3 else None) != version:
            raise CorruptCheckpointError(
                f"format version {version} in the prefix, {header.get('format')!r} in the header"
            )
        topic_id = header.get("topic_id")
        if topic_id is not None and not isinstance(topic_id, str):
            raise CorruptCheckpointError(f"bad topic_id {topic_id!r}")
    except CorruptCheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise CorruptCheckpointError(f"bad header: {exc}") from exc
    state = data[state_start:]
    if (found_topic, found_partition) != (topic, partition):
        raise CorruptCheckpointError(f"holds {found_topic!r}/{found_partition!r}")
    if state_len != len(state):
        raise CorruptCheckpointError(f"state is {len(state)} bytes, header says {state_len!r}")
    if sha256 != hashlib.sha256(state).hexdigest():
        raise CorruptCheckpointError("state sha256 mismatch")
    if type(offset) is not int or offset < 0 or type(written_at) not in (int, float):
        raise CorruptCheckpointError(f"bad offset {offset!r} or written_at {written_at!r}")
    return Checkpoint(topic, partition, offset, state, float(written_at), drifts, topic_id)


def file_name(topic: str, partition: int) -> str:
    """Injective: quote() escapes everything but alphanumerics and '.', '_', '-', '~'."""
    quoted = urllib.parse.quote(topic, safe="")
    if len(quoted) > _MAX_QUOTED_TOPIC:
        # quote() always escapes '+', so a shortened name never equals an unshortened one.
        quoted = f"{quoted[:80]}+{hashlib.sha256(topic.encode()).hexdigest()}"
    return f"{quoted}-{partition}{SUFFIX}"


class DirectoryCheckpointStore:
    """One file per partition in ``directory``, replaced atomically on every save."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob(f"{TEMP_PREFIX}*"):
                stale.unlink(missing_ok=True)
            fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CheckpointDirectoryError(
                f"checkpoint directory {directory} is not writable: {exc}"
            ) from exc

    def path(self, topic: str, partition: int) -> Path:
        return self.directory / file_name(topic, partition)

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        path = self.path(topic, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointFileError(
                f"checkpoint {path} cannot be read ({exc.strerror or exc}); "
                "move it away or fix state.dir"
            ) from exc
        try:
            return decode(data, topic, partition)
        except CorruptCheckpointError as exc:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            try:
                os.replace(path, aside)
            except OSError as move_exc:
                raise CheckpointFileError(
                    f"corrupt checkpoint {path} ({exc}) cannot be moved aside "
                    f"({move_exc.strerror or move_exc})"
                ) from move_exc
            log.warning(
                "corrupt checkpoint moved aside; partition starts fresh from its committed offset",
                topic=topic,
                partition=partition,
                reason=str(exc),
                moved_to=str(aside),
            )
            return None

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the partition's file atomically; :class:`CheckpointFileError` if it
        cannot be written."""
        data = encode(checkpoint)
        path = self.path(checkpoint.topic, checkpoint.partition)
        try:
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.directory)
        except OSError as exc:
            raise CheckpointFileError(
                f"checkpoint {path} cannot be written ({exc.strerror or exc})"
            ) from exc
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            # The bytes are durable before the rename, so the name points at old or new ones.
            os.replace(temp, path)
            # The rename itself survives a crash only once the directory entry is synced.
            self._fsync_directory()
        except OSError as exc:
            with contextlib.suppress(OSError):
                Path(temp).unlink(missing_ok=True)
            raise CheckpointFileError(
                f"checkpoint {path} cannot be written ({exc.strerror or exc})"
            ) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                Path(temp).unlink(missing_ok=True)
            raise

    def delete(self, topic: str, partition: int) -> None:
        self.path(topic, partition).unlink(missing_ok=True)
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _in_display_units(drift: ActiveDrift) -> ActiveDrift:
    """A drift saved by a format-2 file, its values mapped to the feature's own unit
    (``embedding_distance`` was already a distance; the MEWMA's ``embedding`` is a
    statistic)."""
    if drift.feature in ("embedding", "embedding_distance"):
        return drift
    return dataclasses.replace(
        drift,
        baseline=units.to_display(drift.feature, drift.baseline),
        current=units.to_display(drift.feature, drift.current),
    )


class StateTopicError(ValueError):
    """The state topic cannot hold checkpoints (not compacted): a configuration error."""


# Chunk headers: every record of a snapshot carries its id, its index and the chunk count.
SNAPSHOT_ID_HEADER: Final = "driftmon-snapshot-id"
CHUNK_INDEX_HEADER: Final = "driftmon-chunk-index"
CHUNK_COUNT_HEADER: Final = "driftmon-chunk-count"
STATE_PRODUCE_TIMEOUT: Final = 30.0
_STATE_END_POLL_MS: Final = 300
STATE_READ_STALL_SECONDS: Final = 120.0  # no record this long before the end: give up


def state_key(group: str, topic: str, partition: int, index: int = 0) -> bytes:
    """``group/topic/partition``; chunk ``i > 0`` appends ``#i``: each chunk has its own key,
    or compaction would keep only a snapshot's last chunk. Kafka topic names hold no '/'
    or '#', so the key parses from the right whatever the group's name."""
    base = f"{group}/{topic}/{partition}"
    return (base if index == 0 else f"{base}#{index}").encode()


def split_state_key(key: bytes) -> tuple[str, int] | None:
    """``(base key, chunk index)``, or None for a key driftmon did not write."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    base, sep, index = text.rpartition("#")
    if not sep:
        return text, 0
    return (base, int(index)) if index.isdigit() and int(index) > 0 else None


def chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes (at least one piece)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class SnapshotAssembler:
    """Reads state-topic records in offset order and keeps, per wanted key, the newest
    complete snapshot: its chunks share one id and are all there. A tombstone removes the
    key; a newer snapshot only half-written (a crash mid-save) leaves the older one.

    >>> a = SnapshotAssembler({"g/t/0"})
    >>> for i, piece in enumerate([b"ab", b"c"]):
    ...     a.add(state_key("g", "t", 0, i), piece, {"driftmon-snapshot-id": b"s1",
    ...           "driftmon-chunk-index": str(i).encode(), "driftmon-chunk-count": b"2"})
    >>> a.complete["g/t/0"]
    b'abc'
    """

    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.complete: dict[str, bytes] = {}
        self.malformed: dict[str, str] = {}  # base key → why a chunk of it was unusable
        self._pending: dict[str, dict[bytes, dict[int, bytes]]] = {}

    def add(self, key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> None:
        parsed = split_state_key(key) if key is not None else None
        if parsed is None or parsed[0] not in self.wanted:
            return
        base, index = parsed
        if value is None:
            if index == 0:  # the snapshot's tombstone (delete)
                self.complete.pop(base, None)
                self._pending.pop(base, None)
            return
        try:
            snapshot_id = headers[SNAPSHOT_ID_HEADER]
            header_index = int(headers[CHUNK_INDEX_HEADER])
            count = int(headers[CHUNK_COUNT_HEADER])
        except (KeyError, ValueError) as exc:
            self.malformed[base] = f"chunk without valid headers ({type(exc).__name__}: {exc})"
            return
        if header_index != index or not 0 <= index < count:
            self.malformed[base] = f"chunk {header_index}/{count} under key index {index}"
            return
        pending = self._pending.setdefault(base, {}).setdefault(snapshot_id, {})
        pending[index] = value
        if len(pending) == count:
            self.complete[base] = b"".join(pending[i] for i in range(count))
            self.malformed.pop(base, None)
            del self._pending[base][snapshot_id]


class KafkaCheckpointStore:
    """Checkpoints in a compacted topic, keyed ``group/topic/partition``.

    ``connect()`` creates the topic (``cleanup.policy=compact``) or checks an existing one:
    a topic whose reported policy is not compact is refused (:class:`StateTopicError`),
    since deletion by age would lose a quiet partition's state. All chunks of a partition
    go to one state-topic partition (by the key's CRC-32), so a restore reads only the
    state partitions its keys live in, from the beginning to the end, with a dedicated
    group-less consumer. ``prefetch(tps)`` reads once for many partitions; ``load`` then
    takes from what was read. A snapshot that cannot be decoded raises
    :class:`CorruptCheckpointError` (the caller counts it and starts the partition cold).
    """

    remote = True  # loaded on the main thread, not in the rebalance callback

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        topic: str,
        group: str,
        chunk_bytes: int,
        topic_partitions: int = 6,
        replication_factor: int = 1,
    ) -> None:
        self.client_config = client_config
        self.topic = topic
        self.group = group
        self.chunk_bytes = chunk_bytes
        self.topic_partitions = topic_partitions
        self.replication_factor = replication_factor
        self._producer: Any = None
        self._reader: Any = None
        self._partitions: int | None = None
        self._prefetched: dict[tuple[str, int], bytes | None] = {}
        self._prefetch_errors: dict[tuple[str, int], str] = {}
        self._chunk_counts: dict[str, int] = {}  # chunks last written per key (tombstones)

    # -- set-up -----------------------------------------------------------------------
    def connect(self, *, bootstrap_timeout_ms: int = 30_000) -> None:
        """Create or check the topic, then open the producer."""
        from kafka import KafkaProducer
        from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(**self.client_config, bootstrap_timeout_ms=bootstrap_timeout_ms)
        try:
            if self.topic not in admin.list_topics():
                try:
                    admin.create_topics(
                        [
                            NewTopic(
                                self.topic,
                                num_partitions=self.topic_partitions,
                                replication_factor=self.replication_factor,
                                topic_configs={"cleanup.policy": "compact"},
                            )
                        ]
                    )
                    log.info("state topic created", topic=self.topic)
                except TopicAlreadyExistsError:  # another replica was first
                    pass
            described = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topic)], config_filter="all"
            )
            configs = described.get("topic", {}).get(self.topic, {})
            check_cleanup_policy(self.topic, configs.get("cleanup.policy", {}).get("value"))
        finally:
            admin.close()
        self._producer = KafkaProducer(
            **self.client_config,
            bootstrap_timeout_ms=bootstrap_timeout_ms,
            acks="all",
            linger_ms=5,
            retries=2_147_483_647,
            max_request_size=self.chunk_bytes + 65_536,
        )
        self._partitions = self._partition_count()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None

    def _partition_count(self) -> int:
        parts = None
        deadline = time.monotonic() + 30
        while not parts and time.monotonic() < deadline:
            parts = self._producer.partitions_for(self.topic)
        if not parts:
            raise StateTopicError(f"state topic {self.topic!r} has no partitions")
        return len(parts)

    def state_partition(self, topic: str, partition: int) -> int:
        assert self._partitions is not None, "connect() first"
        return zlib.crc32(state_key(self.group, topic, partition)) % self._partitions

    # -- CheckpointStore ----------------------------------------------------------------
    def save(self, checkpoint: Checkpoint) -> None:
        """Every chunk acknowledged (acks=all) before it returns; raises the producer's
        error otherwise (then the offset is not committed)."""
        data = encode(checkpoint)
        pieces = chunks(data, self.chunk_bytes)
        snapshot_id = uuid.uuid4().hex.encode()
        target = self.state_partition(checkpoint.topic, checkpoint.partition)
        futures = []
        for index, piece in enumerate(pieces):
            headers = [
                (SNAPSHOT_ID_HEADER, snapshot_id),
                (CHUNK_INDEX_HEADER, str(index).encode()),
                (CHUNK_COUNT_HEADER, str(len(pieces)).encode()),
            ]
            key = state_key(self.group, checkpoint.topic, checkpoint.partition, index)
            futures.append(
                self._producer.send(
                    self.topic, key=key, value=piece, headers=headers, partition=target
                )
            )
        base = state_key(self.group, checkpoint.topic, checkpoint.partition).decode()
        # Chunks of an older, longer snapshot would never be compacted away: tombstone them.
        for index in range(len(pieces), self._chunk_counts.get(base, 0)):
            key = state_key(self.group, checkpoint.topic, checkpoint.partition, index)
            futures.append(self._producer.send(self.topic, key=key, value=None, partition=target))
        for future in futures:
            future.get(timeout=STATE_PRODUCE_TIMEOUT)
        self._chunk_counts[base] = len(pieces)

    def delete(self, topic: str, partition: int) -> None:
        target = self.state_partition(topic, partition)
        base = state_key(self.group, topic, partition).decode()
        for index in range(max(1, self._chunk_counts.pop(base, 1))):
            key = state_key(self.group, topic, partition, index)
            self._producer.send(self.topic, key=key, value=None, partition=target)
        self._producer.flush(timeout=STATE_PRODUCE_TIMEOUT)

    def prefetch(self, tps: list[tuple[str, int]]) -> None:
        """Read the state partitions holding ``tps``' keys to their end, once."""
        bases = {state_key(self.group, t, p).decode(): (t, p) for t, p in tps}
        assembler = self.read(set(bases), {self.state_partition(t, p) for t, p in tps})
        for base, tp in bases.items():
            self._prefetched[tp] = assembler.complete.get(base)
            if base in assembler.malformed and base not in assembler.complete:
                self._prefetch_errors[tp] = assembler.malformed[base]

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        tp = (topic, partition)
        if tp not in self._prefetched:
            self.prefetch([tp])
        data = self._prefetched.pop(tp)
        error = self._prefetch_errors.pop(tp, None)
        if data is None:
            if error is not None:
                raise CorruptCheckpointError(error)
            return None
        base = state_key(self.group, topic, partition).decode()
        self._chunk_counts[base] = len(chunks(data, self.chunk_bytes))
        return decode(data, topic, partition)

    def read(self, wanted: set[str], partitions: set[int]) -> SnapshotAssembler:
        """The newest complete snapshot of each ``wanted`` key in ``partitions``."""
        from kafka import KafkaConsumer, TopicPartition

        if self._reader is None:  # kept: one connection for every restore
            self._reader = KafkaConsumer(
                **self.client_config,
                group_id=None,
                enable_auto_commit=False,
                fetch_max_bytes=max(52_428_800, self.chunk_bytes * 4),
                max_partition_fetch_bytes=self.chunk_bytes + 65_536,
            )
        consumer = self._reader
        assembler = SnapshotAssembler(wanted)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        # A large state partition takes as long as it takes: give up only when no record
        # has arrived for STATE_READ_STALL_SECONDS (a broker that stopped answering), not
        # after a fixed time (10 GB of snapshots read at 80 MB/s is two minutes).
        deadline = time.monotonic() + STATE_READ_STALL_SECONDS
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=_STATE_END_POLL_MS)
            for records in batch.values():
                for rec in records:
                    assembler.add(rec.key, rec.value, dict(rec.headers or ()))
            if batch:
                deadline = time.monotonic() + STATE_READ_STALL_SECONDS
            # Stop at the end taken before reading, once a poll past it is empty.
            elif all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
        else:
            raise StateTopicError(
                f"state topic {self.topic!r}: no record for {STATE_READ_STALL_SECONDS:.0f} s "
                "before its end"
            )
        return assembler


def check_cleanup_policy(topic: str, policy: str | None) -> None:
    """Refuse a state topic whose reported ``cleanup.policy`` is not compact (``None``: the
    broker did not say; the topic is used)."""
    if policy is None:
        log.warning("state topic cleanup.policy not reported; assuming compact", topic=topic)
        return
    if "compact" not in {part.strip() for part in policy.split(",")}:
        raise StateTopicError(
            f"state topic {topic!r} has cleanup.policy={policy}; it must be compact "
            f"(kafka-configs --alter --entity-type topics --entity-name {topic} "
            "--add-config cleanup.policy=compact), or set state.topic to another topic"
        )
