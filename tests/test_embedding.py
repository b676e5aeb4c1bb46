import functools
import importlib.util
import multiprocessing
import os
import signal
import socket
import time

import numpy as np
import pytest

from driftmon.config import pipeline_config
from driftmon.embedding import (
    EmbeddingUnavailable,
    EmbeddingWorker,
    Sampler,
    load_embedder,
    resolve_model,
)
from driftmon.settings import EmbeddingSettings
from tests.support import skip_without_model


def _refuse(*args, **kwargs):
    raise AssertionError("network access attempted")


def _block_network(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(socket.socket, "connect", _refuse)
    mp.setattr(socket, "create_connection", _refuse)


@pytest.fixture
def no_network(monkeypatch):
    _block_network(monkeypatch)


# -- the real packaged model ----------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    if importlib.util.find_spec("sentence_transformers") is None:
        skip_without_model(
            "sentence-transformers is not installed: pip install -e '.[embeddings]' (make does)"
        )
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)  # loading must not try the hub
        try:
            return load_embedder(EmbeddingSettings(enabled=True))
        except EmbeddingUnavailable as exc:
            skip_without_model(str(exc))


@pytest.mark.embeddings
def test_real_model_encodes_normalised_384_vectors(embedder, no_network):
    texts = [
        "The cat sat on the mat.",
        "A cat is sitting on a rug.",
        "Quarterly revenue grew by four percent.",
    ]
    vectors = embedder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.6 > 0.2 > unrelated
    assert embedder.encode([]).shape == (0, 384)


@pytest.mark.embeddings
def test_real_model_through_the_worker_matches_direct_encoding(embedder):
    texts = [f"answer number {i}: " + "lorem ipsum " * i for i in range(20)]
    factory = functools.partial(load_embedder, EmbeddingSettings(enabled=True), threads=1)
    worker: EmbeddingWorker[str, int] = EmbeddingWorker(factory, batch_size=8)
    try:
        for i, text in enumerate(texts):
            assert worker.submit("k", i, text)
        got: list[tuple[str, int, np.ndarray]] = []
        deadline = time.monotonic() + 60
        while len(got) < len(texts) and time.monotonic() < deadline:
            got += worker.drain()
            time.sleep(0.05)
    finally:
        assert worker.close(timeout=10)
    assert [ref for _, ref, _ in got] == list(range(20))
    direct = embedder.encode(texts)
    assert np.allclose(np.stack([v for _, _, v in got]), direct, atol=1e-5)


def test_missing_model_directory_raises_without_network(tmp_path, no_network):
    with pytest.raises(EmbeddingUnavailable, match="neither a model directory"):
        load_embedder(EmbeddingSettings(enabled=True, model=str(tmp_path / "no-such-model")))
    with pytest.raises(EmbeddingUnavailable, match="holds no sentence-transformers model"):
        load_embedder(EmbeddingSettings(enabled=True, model=str(tmp_path)))
    with pytest.raises(EmbeddingUnavailable, match=r"pip install torch==2\.13\.0"):
        resolve_model("no-such-model-package")
    with pytest.raises(EmbeddingUnavailable):
        resolve_model("sentence-transformers/all-MiniLM-L6-v2")  # a hub id is never fetched


def test_a_directory_or_its_model_subfolder_resolves(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "modules.json").write_text("[]")
    assert resolve_model(str(tmp_path)) == tmp_path / "model"
    assert resolve_model(str(tmp_path / "model")) == tmp_path / "model"


# -- sampler --------------------------------------------------------------------------


def _decisions(sampler, keys, n, rate_per_second=1000.0):
    return [sampler.decide(keys[i % len(keys)], i, now=i / rate_per_second) for i in range(n)]


def test_sampler_is_deterministic():
    keys = [("chat", "m1"), ("chat", "m2"), ("sql", "m1")]
    a = _decisions(Sampler(0.1, 50.0, seed=3), keys, 5000)
    b = _decisions(Sampler(0.1, 50.0, seed=3), keys, 5000)
    c = _decisions(Sampler(0.1, 50.0, seed=4), keys, 5000)
    assert a == b and a != c


def test_sampler_takes_every_new_keys_first_events_then_the_rate():
    sampler = Sampler(0.1, 1e9, seed=0, min_per_key=20)
    first = [sampler.decide(("chat", "new"), i, now=0.0) for i in range(20)]
    assert all(first)
    later = [sampler.decide(("chat", "new"), i, now=0.0) for i in range(20, 20_020)]
    assert sum(later) / len(later) == pytest.approx(0.1, abs=0.01)
    sampler.forget(("chat", "new"))
    assert sampler.decide(("chat", "new"), 0, now=0.0)


def test_sampler_honours_the_budget():
    # 10 000 events/s for 10 s, every one wanted: at most budget × 10 s + one burst.
    sampler = Sampler(1.0, budget_per_second=25.0, seed=0, min_per_key=0)
    taken = sum(sampler.decide(("k",), i, now=i / 10_000) for i in range(100_000))
    assert 250 <= taken <= 250 + 25 + 1
    assert sampler.skipped_budget == 100_000 - taken
    # A clock that goes backwards adds no tokens.
    stalled = Sampler(1.0, budget_per_second=5.0, seed=0, min_per_key=0)
    assert sum(stalled.decide(("k",), i, now=100.0 - i) for i in range(100)) == 5


def test_pipeline_spends_the_budget_on_its_clock_not_on_event_time():
    """A backlog whose events are an hour apart, read in an instant: the daemon's budget
    is embeddings per wall-clock second, so the burst is all it gets."""
    import json

    from driftmon.core.pipeline import Pipeline
    from driftmon.settings import Settings

    settings = Settings(embeddings={"enabled": False})
    lines = [
        json.dumps({"endpoint": "e", "model": "m", "output": f"answer {i}", "timestamp": 3600 * i})
        for i in range(200)
    ]

    def embedded(**clock):
        sampler = Sampler(1.0, budget_per_second=5.0, seed=0, min_per_key=0)
        pipeline = Pipeline(pipeline_config(settings), sampler=sampler, **clock)
        return sum(pipeline.process(line, i).embed for i, line in enumerate(lines))

    assert embedded(sampler_clock=lambda: 1000.0) == 5  # one burst, the clock stands still
    assert embedded() == 200  # replay: event time, an hour of budget between events


def test_backlog_halves_the_ratio_to_a_floor_and_recovers():
    sampler = Sampler(0.2, 100.0, min_factor=1 / 8, adapt_seconds=1.0)
    sampler.report_backlog(200, 256, now=0.0)
    sampler.report_backlog(200, 256, now=0.5)  # too soon: ignored
    assert sampler.ratio == pytest.approx(0.1)
    for t in range(1, 10):
        sampler.report_backlog(256, 256, now=float(t))
    assert sampler.ratio == pytest.approx(0.2 / 8)
    sampler.report_backlog(100, 256, now=20.0)  # between a quarter and a half: hold
    assert sampler.ratio == pytest.approx(0.2 / 8)
    for t in range(21, 30):
        sampler.report_backlog(0, 256, now=float(t))
    assert sampler.ratio == pytest.approx(0.2)


# -- worker ---------------------------------------------------------------------------
# The worker is a child process ("spawn"): the stand-in embedders below are module-level
# classes so the child can import them; batch sizes are seen through on_batch.


class SlowEmbedder:
    """Stands in for the model: 2 ms per text; waits for ``gate`` (if any) first."""

    def __init__(self, gate=None) -> None:
        self.gate = gate

    def encode(self, texts):
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(0.002 * len(texts))
        return np.full((len(texts), 4), 0.5, dtype=np.float32)


def _fail_to_load():
    raise EmbeddingUnavailable("no model here")


def _drain_until(worker, n, timeout=30.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += worker.drain()
        time.sleep(0.01)
    return got


def _drain_until_it_raises(worker, match, timeout=10.0):
    deadline = time.monotonic() + timeout
    with pytest.raises(RuntimeError, match=match):
        while time.monotonic() < deadline:
            worker.drain()
            time.sleep(0.01)


def test_worker_queue_stays_bounded_under_a_flood():
    seen: list[tuple[int, float]] = []
    worker: EmbeddingWorker[str, int] = EmbeddingWorker(
        SlowEmbedder, batch_size=16, queue_size=64, on_batch=lambda n, s: seen.append((n, s))
    )
    accepted = 0
    try:
        for i in range(10_000):
            accepted += worker.submit("k", i, "text")
            assert worker.backlog <= 64
        stats = worker.stats()
        assert stats.dropped == 10_000 - accepted > 0
        got = _drain_until(worker, accepted)
    finally:
        assert worker.close(timeout=5)
    assert len(got) == accepted
    refs = [ref for _, ref, _ in got]
    assert refs == sorted(refs)
    # One encode call takes up to four batches (the embedder batches by 16 inside).
    assert max(n for n, _ in seen) <= 4 * 16 and sum(n for n, _ in seen) == accepted
    assert worker.stats().embedded == accepted


def test_worker_batches_what_is_waiting():
    gate = multiprocessing.get_context("spawn").Event()
    sizes: list[int] = []
    worker: EmbeddingWorker[str, int] = EmbeddingWorker(
        functools.partial(SlowEmbedder, gate),
        batch_size=8,
        queue_size=100,
        on_batch=lambda n, s: sizes.append(n),
    )
    try:
        worker.submit("k", -1, "first")  # taken alone while the gate holds the child
        deadline = time.monotonic() + 10
        while worker.backlog and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        for i in range(40):
            assert worker.submit("k", i, "t")
        gate.set()
        got = _drain_until(worker, 41)
    finally:
        worker.close()
    assert len(got) == 41
    assert sizes == [1, 32, 8]  # up to 4 x batch_size per encode call


class FailsOnPoison:
    """Raises on any batch holding the text "poison", like a model choking on one input."""

    def encode(self, texts):
        if "poison" in texts:
            raise ValueError("cannot encode")
        return np.full((len(texts), 4), 0.5, dtype=np.float32)


def test_a_batch_the_model_raises_on_is_skipped_and_counted():
    worker: EmbeddingWorker[str, int] = EmbeddingWorker(FailsOnPoison, batch_size=1)
    try:
        assert worker.submit("k", 0, "poison")
        deadline = time.monotonic() + 10
        while worker.stats().failed < 1 and time.monotonic() < deadline:
            assert worker.drain() == []
            time.sleep(0.01)
        assert worker.stats().failed == 1 and worker.last_error == "ValueError"
        assert worker.submit("k", 1, "fine")  # the worker goes on
        got = _drain_until(worker, 1)
    finally:
        assert worker.close()
    assert [ref for _, ref, _ in got] == [1]


def test_a_model_that_cannot_load_fails_the_constructor_with_its_reason():
    with pytest.raises(EmbeddingUnavailable, match="no model here"):
        EmbeddingWorker(_fail_to_load)


def test_a_dead_worker_is_reported_not_waited_for():
    worker: EmbeddingWorker[str, int] = EmbeddingWorker(SlowEmbedder)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    _drain_until_it_raises(worker, "exited")
    assert not worker.submit("k", 0, "x")
    worker.close()
