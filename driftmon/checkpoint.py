"""Per-partition checkpoints: a Monitor snapshot, the drifts active in it, and the Kafka offset
they reflect.

State and offset live in one record, written atomically, because they must never disagree:
state ahead of its offset would count records twice after a restart, state behind it would
skip them. The daemon saves the checkpoint first and only then commits the offset to Kafka, so
a crash between the two loses nothing: the checkpoint's offset, not Kafka's, says where to resume.

``CheckpointStore`` is deliberately small (load, save, delete by topic/partition) and a record's
bytes come from :func:`encode`/:func:`decode`, so a compacted Kafka topic store can be added
later for multi-replica handoff: key = ``topic/partition``, value = the same bytes, delete = a
tombstone. ``DirectoryCheckpointStore`` keeps one file per partition; its directory must belong
to one process (stale temp files are removed on start-up) and be private (the state is a pickle).

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
import urllib.parse
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

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
