from __future__ import annotations

import doctest
import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from driftmon import checkpoint as checkpoint_module
from driftmon.checkpoint import (
    TEMP_PREFIX,
    ActiveDrift,
    Checkpoint,
    CheckpointDirectoryError,
    CheckpointFileError,
    CheckpointStore,
    CorruptCheckpointError,
    DirectoryCheckpointStore,
    decode,
    encode,
    file_name,
)
from driftmon.core.monitor import Monitor, MonitorConfig


def make(
    offset: int = 100, state: bytes = b"state-bytes", topic: str = "llm.outputs"
) -> Checkpoint:
    return Checkpoint(topic, 2, offset, state, written_at=1_700_000_000.25)


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_round_trip_with_a_real_monitor_snapshot(tmp_path: Path) -> None:
    monitor = Monitor(MonitorConfig(), feature_count=lambda endpoint: 1)
    for i in range(50):
        monitor.update("chat", "m1", {"output_chars": float(i % 7)}, now=float(i))
    store: CheckpointStore = DirectoryCheckpointStore(tmp_path / "a" / "b")
    saved = Checkpoint("llm.outputs", 2, 50, monitor.snapshot(), written_at=1_700_000_000.25)

    store.save(saved)
    loaded = store.load("llm.outputs", 2)

    assert loaded == saved
    restored = Monitor(MonitorConfig(), feature_count=lambda endpoint: 1)
    restored.restore(loaded.state)
    key = restored.get("chat", "m1")
    assert key is not None and key.events == 50 and key.last_seen == 49.0


def test_file_layout_is_prefix_json_header_then_state() -> None:
    data = encode(make(state=b"xyz"))
    assert data[:4] == b"DMCK"
    assert int.from_bytes(data[4:6], "big") == 3
    assert data.endswith(b"xyz")
    assert decode(data, "llm.outputs", 2) == make(state=b"xyz")


DRIFT = ActiveDrift(
    endpoint="chat",
    model="m1",
    feature="output_chars",
    detector="page_hinkley",
    baseline=6.8,
    current=7.42,
    key_events=1234,
    events_since_onset=57,
    detected_at=1_700_000_000.5,
    since=1_700_000_100.0,
)


def test_active_drifts_round_trip_and_nan_becomes_null(tmp_path: Path) -> None:
    unknown = ActiveDrift(**{**DRIFT.__dict__, "feature": "embedding", "current": math.nan})
    saved = Checkpoint("llm.outputs", 2, 7, b"s", 1.0, drifts=(DRIFT, unknown))
    store = DirectoryCheckpointStore(tmp_path)
    store.save(saved)
    loaded = store.load("llm.outputs", 2)
    assert loaded is not None
    assert loaded.drifts[0] == DRIFT
    assert math.isnan(loaded.drifts[1].current)
    assert loaded.drifts[1].key == ("chat", "m1", "embedding")
    assert b'"current": null' in store.path("llm.outputs", 2).read_bytes()


def test_a_version_1_file_still_loads_with_no_drifts() -> None:
    # Written by driftmon before drifts were saved: the upgrade keeps its state.
    header = json.dumps(
        {
            "topic": "llm.outputs",
            "partition": 2,
            "offset": 100,
            "written_at": 1_700_000_000.25,
            "state_sha256": hashlib.sha256(b"old-state").hexdigest(),
            "state_len": 9,
        }
    ).encode()
    prefix = checkpoint_module._PREFIX.pack(b"DMCK", 1, len(header), zlib.crc32(header))
    assert decode(prefix + header + b"old-state", "llm.outputs", 2) == make(state=b"old-state")


def test_a_version_2_files_drifts_are_mapped_to_display_units() -> None:
    # Format 2 saved drift values as the detectors saw them (log1p counts, 0-1 rates).
    rate = ActiveDrift(**{**DRIFT.__dict__, "feature": "refusal", "baseline": 0.02})
    mewma = ActiveDrift(**{**DRIFT.__dict__, "feature": "embedding", "baseline": 30.0})
    data = encode(Checkpoint("llm.outputs", 2, 7, b"s", 1.0, (DRIFT, rate, mewma)))
    header_len = checkpoint_module._PREFIX.unpack_from(data)[2]
    start = checkpoint_module._PREFIX.size
    header = json.loads(data[start : start + header_len])
    del header["format"]  # format 2 headers had none
    raw = json.dumps(header, sort_keys=True).encode()
    prefix = checkpoint_module._PREFIX.pack(b"DMCK", 2, len(raw), zlib.crc32(raw))
    loaded = decode(prefix + raw + data[start + header_len :], "llm.outputs", 2)
    chars, refusal, embedding = loaded.drifts
    assert chars.baseline == pytest.approx(math.expm1(6.8))  # ~897 characters
    assert chars.current == pytest.approx(math.expm1(7.42))
    assert refusal.baseline == pytest.approx(2.0)  # percent
    assert embedding == mewma  # a statistic, unchanged


@pytest.mark.parametrize(
    "entry",
    [
        "not-an-object",
        {**DRIFT.to_json(), "extra": 1},
        {k: v for k, v in DRIFT.to_json().items() if k != "since"},
        {**DRIFT.to_json(), "endpoint": 5},
        {**DRIFT.to_json(), "baseline": "6.8"},
        {**DRIFT.to_json(), "key_events": 1.5},
        {**DRIFT.to_json(), "events_since_onset": "57"},
        {**DRIFT.to_json(), "detected_at": None},
    ],
)
def test_a_malformed_drift_entry_makes_the_checkpoint_corrupt(entry: object) -> None:
    data = encode(Checkpoint("llm.outputs", 2, 7, b"s", 1.0, drifts=(DRIFT,)))
    header_len = checkpoint_module._PREFIX.unpack_from(data)[2]
    start = checkpoint_module._PREFIX.size
    header = json.loads(data[start : start + header_len])
    header["drifts"] = [entry]
    raw = json.dumps(header).encode()
    forged = checkpoint_module._PREFIX.pack(b"DMCK", 2, len(raw), zlib.crc32(raw)) + raw + b"s"
    with pytest.raises(CorruptCheckpointError, match="drift"):
        decode(forged, "llm.outputs", 2)


def test_missing_file_returns_none(tmp_path: Path) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    assert store.load("llm.outputs", 0) is None
    assert files(tmp_path) == []


def test_overwrite_keeps_only_the_newest(tmp_path: Path) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    store.save(make(offset=10, state=b"old"))
    store.save(make(offset=20, state=b"new"))

    assert store.load("llm.outputs", 2) == make(offset=20, state=b"new")
    assert files(tmp_path) == [file_name("llm.outputs", 2)]


def truncate(data: bytes) -> bytes:
    return data[:-3]


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def flip_offset_digit(data: bytes) -> bytes:
    return data.replace(b'"offset": 100', b'"offset": 101')  # valid JSON; sha256 still matches


def wrong_magic(data: bytes) -> bytes:
    return b"XXXX" + data[4:]


def future_version(data: bytes) -> bytes:
    return data[:4] + (4).to_bytes(2, "big") + data[6:]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (truncate, "state is"),
        (lambda data: data[:5], "truncated prefix"),
        (lambda data: data[:20], "exceeds the file"),
        (lambda data: b"", "truncated prefix"),
        (flip_last_byte, "sha256"),
        (flip_offset_digit, "CRC-32"),
        (wrong_magic, "magic"),
        (future_version, "format version 4"),
    ],
    ids=[
        "truncated-state",
        "truncated-prefix",
        "truncated-header",
        "empty",
        "flipped-state-byte",
        "edited-header",
        "wrong-magic",
        "future-version",
    ],
)
def test_corrupt_file_is_moved_aside_and_returns_none(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    store.save(make())
    path = store.path("llm.outputs", 2)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)

    with structlog.testing.capture_logs() as logs:
        assert store.load("llm.outputs", 2) is None

    assert not path.exists()
    [aside] = tmp_path.iterdir()
    assert aside.name.startswith(f"{path.name}.corrupt-")
    assert aside.read_bytes() == damaged
    [warning] = logs
    assert warning["log_level"] == "warning"
    assert (warning["topic"], warning["partition"]) == ("llm.outputs", 2)
    assert reason in warning["reason"]
    assert store.load("llm.outputs", 2) is None  # nothing left to load


def test_every_single_bit_flip_anywhere_in_the_file_is_detected() -> None:
    data = encode(make(state=b"state-bytes"))
    for i in range(len(data)):
        for bit in range(8):
            damaged = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
            with pytest.raises(CorruptCheckpointError):
                decode(damaged, "llm.outputs", 2)


def test_a_file_for_another_partition_is_not_used(tmp_path: Path) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    store.save(make())
    os.replace(store.path("llm.outputs", 2), store.path("llm.outputs", 3))
    assert store.load("llm.outputs", 3) is None


def test_odd_topic_names_do_not_collide(tmp_path: Path) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    topics = ["a.b", "a_b", "a-b", "a/b", "a%2Fb", "a b", "ä", "..", "a" * 300, "a" * 301]
    for i, topic in enumerate(topics):
        store.save(make(offset=i, topic=topic))

    for i, topic in enumerate(topics):
        loaded = store.load(topic, 2)
        assert loaded is not None and loaded.offset == i and loaded.topic == topic
    assert len(files(tmp_path)) == len(topics)
    assert all("/" not in name and len(name) < 200 for name in files(tmp_path))
    assert file_name("a.b", 2) == "a.b-2.dmck"


def test_crash_during_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    store.save(make(offset=10, state=b"old"))

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated crash"):
            store.save(make(offset=20, state=b"new"))

    assert store.load("llm.outputs", 2) == make(offset=10, state=b"old")
    assert files(tmp_path) == [file_name("llm.outputs", 2)]
    store.save(make(offset=30, state=b"newer"))
    assert store.load("llm.outputs", 2) == make(offset=30, state=b"newer")
    assert files(tmp_path) == [file_name("llm.outputs", 2)]


def test_stale_temp_files_from_a_killed_process_are_removed_on_init(tmp_path: Path) -> None:
    DirectoryCheckpointStore(tmp_path).save(make(offset=10, state=b"old"))
    (tmp_path / f"{TEMP_PREFIX}abc123").write_bytes(encode(make(offset=20))[:7])
    (tmp_path / ".tmp-x-2.dmck").write_bytes(b"a checkpoint for topic '.tmp-x', kept")

    store = DirectoryCheckpointStore(tmp_path)

    assert files(tmp_path) == sorted([".tmp-x-2.dmck", file_name("llm.outputs", 2)])
    assert store.load("llm.outputs", 2) == make(offset=10, state=b"old")


def test_delete(tmp_path: Path) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    store.save(make())
    store.save(make(topic="other"))

    store.delete("llm.outputs", 2)
    store.delete("llm.outputs", 2)  # deleting a missing checkpoint is not an error

    assert store.load("llm.outputs", 2) is None
    assert store.load("other", 2) == make(topic="other")


def test_unusable_directory_fails_clearly(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(CheckpointDirectoryError, match="not writable"):
        DirectoryCheckpointStore(not_a_directory / "checkpoints")


def test_the_topic_id_round_trips_and_older_files_have_none(tmp_path: Path) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    saved = Checkpoint("llm.outputs", 2, 7, b"s", 1.0, topic_id="8d4f3c2e-0000-4000-8000-1")
    store.save(saved)
    assert store.load("llm.outputs", 2) == saved
    header_len = checkpoint_module._PREFIX.unpack_from(encode(make()))[2]
    assert b"topic_id" not in encode(make())[: checkpoint_module._PREFIX.size + header_len]
    assert decode(encode(make()), "llm.outputs", 2).topic_id is None


def test_a_directory_where_the_checkpoint_should_be_is_named_clearly(tmp_path: Path) -> None:
    store = DirectoryCheckpointStore(tmp_path)
    store.path("llm.outputs", 2).mkdir()
    with pytest.raises(CheckpointFileError, match=r"llm\.outputs-2\.dmck cannot be read"):
        store.load("llm.outputs", 2)
    with pytest.raises(CheckpointFileError, match="cannot be written"):
        store.save(make())


def test_a_state_dir_gone_mid_run_fails_with_the_path(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = DirectoryCheckpointStore(state)
    store.save(make(offset=1))
    for path in state.iterdir():
        path.unlink()
    state.rmdir()
    state.write_text("a file now")  # fails for root too, unlike a chmod
    with pytest.raises(CheckpointFileError, match=f"{state}.*cannot be written"):
        store.save(make(offset=2))
    assert state.read_text() == "a file now"


def test_invalid_checkpoints_are_rejected() -> None:
    for topic, partition, offset in [("", 0, 0), ("t", -1, 0), ("t", 0, -1)]:
        with pytest.raises(ValueError, match="invalid checkpoint"):
            Checkpoint(topic, partition, offset, b"", written_at=0.0)


def test_module_docstring_example() -> None:
    assert doctest.testmod(checkpoint_module).failed == 0
