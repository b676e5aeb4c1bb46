"""The river-style detector protocol every drift detector of the core follows.

A detector is configured by its constructor and learns from the values it is given:
``update(x)`` feeds one value, ``drift_detected`` says whether that value made it fire,
``statistic`` and ``threshold`` are what it compares, and ``reset()`` forgets what it
learned (river's detectors, whose ``_reset`` this mirrors). Implementations:

- :class:`driftmon.core.detectors.FeatureStream`: the compiled, fused per-feature stream
  (reference learning, Page-Hinkley and ADWIN); its ``update`` also returns the alarm.
- :class:`driftmon.core.detectors.FrozenPageHinkley`: the same Page-Hinkley test as a
  river object.
- :class:`driftmon.core.embeddings.MewmaDetector`: MEWMA on whole embeddings.

>>> import random
>>> from driftmon.core.detectors import DetectorConfig, FeatureStream
>>> stream: DriftDetector[float] = FeatureStream("latency", "continuous", 1e5, DetectorConfig())
>>> rng = random.Random(3)
>>> values = [rng.gauss(0, 1) for _ in range(2000)] + [rng.gauss(1, 1) for _ in range(500)]
>>> fired = [i for i, x in enumerate(values) if (stream.update(x), stream.drift_detected)[1]]
>>> fired[0] >= 2000
True
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

X_contra = TypeVar("X_contra", contravariant=True)


@runtime_checkable
class DriftDetector(Protocol[X_contra]):
    """One detector on one stream of values of type ``X_contra``."""

    def update(self, x: X_contra, /) -> object:
        """Feed one value (implementations may return what they found)."""
        ...

    @property
    def drift_detected(self) -> bool:
        """Whether the last value fed made the detector fire."""
        ...

    @property
    def statistic(self) -> float:
        """The detector's current test statistic."""
        ...

    @property
    def threshold(self) -> float:
        """The value ``statistic`` is compared with."""
        ...

    def reset(self) -> None:
        """Forget everything learned; start learning again."""
        ...
