"""Per-key embedding reference and the multivariate EWMA detector (numpy only, no I/O).

A key's sampled output embeddings are watched two ways (SPEC §2):

* ``embedding_distance``: the Mahalanobis distance of each embedding to the key's reference
  (mean, Ledoit–Wolf shrunk covariance). It is a scalar the caller feeds to a
  :class:`~driftmon.core.detectors.FeatureStream`, which learns its own standardisation.
* ``embedding``/``mewma``: a multivariate EWMA of the whitened embedding, for small mean
  shifts spread over many coordinates that no single distance reveals.

The reference is learned from two disjoint parts of the warm-up. The *fit* part gives the
mean and covariance. The *calibration* part is held out: its distances and its whitened
vectors are what a new answer from the same model looks like, prompt novelty included,
and the MEWMA threshold is set by simulating on them. Fit-part vectors would look closer
to the reference than any future answer and give thresholds that fire on unseen prompts.

The covariance is kept as its top ``rank`` eigen-directions plus one variance for the rest
(probabilistic PCA), so a key costs ``rank × dim`` floats instead of ``dim²``. The MEWMA
watches those ``rank`` directions only. ``rank = 32`` by default: 200 fit vectors give
about six per direction; on MiniLM embeddings of real answers the top 32 carry half the
variance (16: a third, 64: three quarters); the null T² spreads like √(2·rank), so more
directions dilute a shift in the main ones; shifts elsewhere still raise the distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

FloatArray = npt.NDArray[np.float64]
Vector = npt.NDArray[np.floating[Any]]

VARIANCE_FLOOR = 1e-10  # a key whose outputs never vary still gets finite distances
SIM_CHAINS = 1000
SIM_STEPS = 500
TAIL_QUANTILE = 0.99  # the exponential tail is fitted above this quantile of T²
# Real held-out data put T² near ``rank``; the floor only matters when the outputs never
# vary, where it keeps rounding noise from firing while any real change still does.
MIN_THRESHOLD = 1.0
MIN_UPCROSSINGS = 20  # fewest threshold upcrossings a level needs to enter the tail fit


def _second_moments(centered: FloatArray) -> FloatArray:
    """XᵀX (p×p) or XXᵀ (n×n), whichever is smaller: they share their non-zero spectrum."""
    n, p = centered.shape
    return centered.T @ centered if n > p else centered @ centered.T


def ledoit_wolf_shrinkage(centered: FloatArray, moments: FloatArray | None = None) -> float:
    """Ledoit–Wolf (2004) optimal shrinkage of the covariance towards (trace/p)·I.

    ``centered`` holds one mean-free observation per row; the sample covariance uses 1/n.
    ``moments`` is ``_second_moments(centered)`` when the caller already has it.
    """
    n, p = centered.shape
    m = _second_moments(centered) if moments is None else moments
    row_sq = (centered * centered).sum(axis=1)
    trace = float(row_sq.sum()) / n
    mu = trace / p
    s_frob2 = float((m * m).sum()) / (n * n)  # ‖S‖²_F
    row_norms4 = float((row_sq * row_sq).sum())  # Σ_k ‖x_k‖⁴
    delta = (s_frob2 - 2.0 * mu * trace + p * mu * mu) / p  # ‖S − μI‖²_F / p
    beta = min((row_norms4 / n - s_frob2) / (n * p), delta)
    return 0.0 if delta <= 0.0 else max(0.0, beta / delta)


def shrunk_covariance(x: FloatArray, min_shrinkage: float = 0.0) -> tuple[FloatArray, float]:
    """Full Ledoit–Wolf covariance of the rows of ``x`` and the shrinkage used."""
    centered = x - x.mean(axis=0)
    shrinkage = max(ledoit_wolf_shrinkage(centered), min_shrinkage)
    n, p = centered.shape
    sample = centered.T @ centered / n
    mu = float(np.trace(sample)) / p
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(p), shrinkage


class EmbeddingReference:
    """Mean, shrunk covariance and held-out calibration data of one key's embeddings.

    Feed warm-up vectors with :meth:`add`: the first ``fit_n`` fit the reference
    (``fitted``), the next ``calib_n`` are held out (``calibrated``).

    >>> rng = np.random.default_rng(0)
    >>> ref = EmbeddingReference(fit_n=100, calib_n=50, rank=4)
    >>> for v in rng.normal(size=(150, 8)):
    ...     ref.add(v)
    >>> ref.calibrated, ref.held_out_whitened.shape
    (True, (50, 4))
    >>> ref.mahalanobis(np.zeros(8)) < ref.mahalanobis(np.full(8, 3.0))
    True
    """

    def __init__(
        self, fit_n: int = 200, calib_n: int = 200, rank: int = 32, min_shrinkage: float = 0.3
    ) -> None:
        if fit_n < 2 or calib_n < 2 or rank < 1 or not 0.0 <= min_shrinkage <= 1.0:
            raise ValueError("need fit_n ≥ 2, calib_n ≥ 2, rank ≥ 1, 0 ≤ min_shrinkage ≤ 1")
        self.fit_n = fit_n
        self.calib_n = calib_n
        self.rank = rank
        self.min_shrinkage = min_shrinkage
        self.shrinkage = math.nan
        self._pending: list[FloatArray] = []
        self._held_out: list[FloatArray] = []
        self._mean = np.zeros(0)
        self._mean_norm = 0.0
        self._basis = np.zeros((0, 0), dtype=np.float32)  # rows: top eigen-directions
        self._inv_sqrt = np.zeros(0)
        self._inv_rest = 0.0
        self.held_out_distances = np.zeros(0)
        self.held_out_whitened = np.zeros((0, 0), dtype=np.float32)

    @property
    def fitted(self) -> bool:
        return self._mean.size > 0

    @property
    def calibrated(self) -> bool:
        return self.held_out_distances.size > 0

    @property
    def mean(self) -> FloatArray:
        return self._mean

    def add(self, v: Vector) -> None:
        """Learn from one warm-up vector; ignored once the reference is calibrated."""
        x = np.asarray(v, dtype=np.float64).ravel()
        if not self.fitted:
            self._pending.append(x)
            if len(self._pending) >= self.fit_n:
                self._fit(np.stack(self._pending))
                self._pending = []
        elif not self.calibrated:
            self._held_out.append(self._project(x))
            if len(self._held_out) >= self.calib_n:
                projected = np.stack(self._held_out)
                top, rest = projected[:, :-1], projected[:, -1]
                self.held_out_distances = np.sqrt((top * top).sum(axis=1) + rest)
                # The held-out mean is off the fit mean by the fit's error (which the live
                # stream shares) plus its own sampling error (which it does not): shrink
                # it so the offsets have the variance of the fit's error alone.
                keep = math.sqrt(self.calib_n / (self.fit_n + self.calib_n))
                top -= (1.0 - keep) * top.mean(axis=0)
                self.held_out_whitened = top.astype(np.float32)
                self._held_out = []

    def discard_held_out_vectors(self) -> None:
        """Free the held-out vectors once the MEWMA threshold is set (a third of a key)."""
        self.held_out_whitened = self.held_out_whitened[:0].copy()

    def _fit(self, x: FloatArray) -> None:
        n, p = x.shape
        mean = x.mean(axis=0)
        centered = x - mean
        moments = _second_moments(centered)
        shrinkage = max(ledoit_wolf_shrinkage(centered, moments), self.min_shrinkage)
        # eigh of the smaller Gram/scatter matrix: a fraction of an SVD's cost.
        w, u = np.linalg.eigh(moments)
        w, u = w[::-1], u[:, ::-1]
        eig = np.maximum(w, 0.0) / n  # sample covariance eigenvalues, descending
        mu = max(float(eig.sum()) / p, VARIANCE_FLOOR)
        r = min(self.rank, p - 1, int((eig > VARIANCE_FLOOR).sum()))
        # Directions with no spread are left to the isotropic remainder.
        basis = u[:, :r].T if n > p else (centered.T @ u[:, :r] / np.sqrt(w[:r])).T
        top = (1.0 - shrinkage) * eig[:r] + shrinkage * mu
        # The shrunk covariance keeps the trace; the p − r other directions share the rest.
        rest = max((mu * p - float(top.sum())) / (p - r), VARIANCE_FLOOR)
        self.shrinkage = shrinkage
        self._mean = mean
        self._mean_norm = float(np.linalg.norm(mean))
        self._basis = basis.astype(np.float32)
        self._inv_sqrt = 1.0 / np.sqrt(top)
        self._inv_rest = 1.0 / rest

    def _project(self, v: Vector) -> FloatArray:
        """Top-``rank`` whitened coordinates, then ‖y − VVᵀy‖² / σ²_rest (y = v − mean)."""
        y = np.asarray(v, dtype=np.float64).ravel() - self._mean
        proj = self._basis @ y
        rest = max(float(y @ y) - float(proj @ proj), 0.0) * self._inv_rest
        return np.append(proj * self._inv_sqrt, rest)

    def whitened(self, v: Vector) -> FloatArray:
        """The top-``rank`` whitened coordinates of ``v`` (about unit variance on the fit)."""
        return self._project(v)[:-1]

    def mahalanobis(self, v: Vector) -> float:
        """Distance of ``v`` to the reference under the shrunk covariance."""
        w = self._project(v)
        return math.sqrt(float(w[:-1] @ w[:-1]) + float(w[-1]))

    def cosine_to_centroid(self, v: Vector) -> float:
        """Cosine similarity of ``v`` to the reference mean (for display only)."""
        x = np.asarray(v, dtype=np.float64).ravel()
        denom = float(np.linalg.norm(x)) * self._mean_norm
        return float(x @ self._mean) / denom if denom > 0.0 else 0.0


@lru_cache(maxsize=8)
def _bootstrap_indices(seed: int, n: int, chains: int, steps: int) -> npt.NDArray[np.intp]:
    """Resampling indices, shared by every key with the same calibration size and seed."""
    idx = np.random.default_rng(seed).integers(0, n, size=(steps, chains))
    idx.setflags(write=False)
    return idx


def mewma_threshold(
    held_out: Vector,
    lam: float,
    target_arl: float,
    seed: int = 0,
    chains: int = SIM_CHAINS,
    steps: int = SIM_STEPS,
) -> float:
    """T² threshold giving about ``target_arl`` updates between false alarms.

    Runs ``chains`` MEWMA chains, past a burn-in to the stationary law, on vectors
    bootstrap-resampled from the held-out rows, and counts upcrossings of candidate
    levels. A target beyond what was simulated is reached with an exponential tail:
    log(upcrossings) fitted linearly in the level over the top 1% of the statistic; on
    Gaussian data and on real answer embeddings it lands within a few T² units (about
    1.5× in ARL) of what 20 M simulated updates give.
    """
    if target_arl <= 1.0 or not 0.0 < lam <= 1.0:
        raise ValueError("need target_arl > 1 and 0 < lam ≤ 1")
    data = np.asarray(held_out, dtype=np.float64)
    burn = math.ceil(5.0 / lam)
    idx = _bootstrap_indices(seed, data.shape[0], chains, burn + steps)
    scale = (2.0 - lam) / lam
    ewma = np.zeros((chains, data.shape[1]))
    stats = np.empty((steps, chains))
    for t in range(burn + steps):
        ewma *= 1.0 - lam
        ewma += lam * data[idx[t]]
        if t >= burn:
            stats[t - burn] = np.einsum("ij,ij->i", ewma, ewma) * scale
    # An excursion counts once: a level is crossed at t when every statistic of the
    # previous 1/λ updates (the EWMA's memory) was at or below it.
    window = math.ceil(1.0 / lam)
    before = sliding_window_view(stats[:-1], window, axis=0).max(axis=-1).ravel()
    after = stats[window:].ravel()
    rising = after > before
    starts, ends = np.sort(before[rising]), np.sort(after[rising])
    top = float(stats.max())
    levels = np.linspace(float(np.quantile(stats, TAIL_QUANTILE)), top, 256)
    # A rising step from a to b crosses every level in [a, b).
    counts = np.searchsorted(starts, levels, side="right") - np.searchsorted(
        ends, levels, side="right"
    )
    wanted = before.size / target_arl
    if wanted >= MIN_UPCROSSINGS:
        return float(levels[np.argmax(counts <= wanted)]) if (counts <= wanted).any() else top
    usable = counts >= MIN_UPCROSSINGS
    if usable.sum() < 3:  # degenerate held-out data (e.g. identical outputs)
        return 2.0 * top + 1.0
    slope, intercept = np.polyfit(
        levels[usable], np.log(counts[usable]), 1, w=np.sqrt(counts[usable])
    )
    if slope >= 0.0:
        return 2.0 * top + 1.0
    return float((math.log(wanted) - intercept) / slope)


class MewmaDetector:
    """Multivariate EWMA of an embedding's top whitened coordinates.

    With whitened input z (identity covariance), e_t = (1 − λ)e_{t−1} + λ·z_t and
    T² = ‖e_t‖² · (2 − λ)/λ, the asymptotic-covariance form of Lowry et al. (1992). The
    threshold comes from :func:`mewma_threshold` on the reference's held-out vectors and
    ``target_arl`` counts updates (embedded events). After an alarm the EWMA restarts;
    the caller should learn a new reference.

    >>> rng = np.random.default_rng(1)
    >>> def draw(n, shift=0.0):  # 8 strong directions out of 16, then a shift along one
    ...     x = rng.normal(size=(n, 16)) * 0.1
    ...     x[:, :8] += rng.normal(size=(n, 8))
    ...     x[:, 0] += shift
    ...     return x
    >>> ref = EmbeddingReference(fit_n=200, calib_n=200, rank=8)
    >>> for v in draw(400):
    ...     ref.add(v)
    >>> det = MewmaDetector(ref, target_arl=5_000, lam=0.1)
    >>> stream = np.vstack([draw(300), draw(100, shift=1.2)])
    >>> next(i for i, v in enumerate(stream) if det.update(v))
    316
    """

    def __init__(
        self, reference: EmbeddingReference, target_arl: float, lam: float = 0.1, seed: int = 0
    ) -> None:
        if not reference.calibrated:
            raise ValueError("the reference must be calibrated before a MEWMA is built on it")
        self.reference = reference
        self.target_arl = target_arl
        self.lam = lam
        self.seed = seed
        self.threshold = max(
            mewma_threshold(reference.held_out_whitened, lam, target_arl, seed), MIN_THRESHOLD
        )
        self._reset()

    def _reset(self) -> None:
        self._ewma = np.zeros(self.reference.held_out_whitened.shape[1])
        self.statistic = 0.0
        self.drift_detected = False

    def update(self, v: Vector) -> bool:
        """Feed one embedding; True when T² crosses the threshold."""
        z = self.reference.whitened(v)
        ewma = self._ewma
        ewma *= 1.0 - self.lam
        ewma += self.lam * z
        self.statistic = float(ewma @ ewma) * (2.0 - self.lam) / self.lam
        if self.statistic > self.threshold:
            self._reset()
            self.drift_detected = True
        else:
            self.drift_detected = False
        return self.drift_detected


@dataclass(frozen=True, slots=True)
class EmbeddingStep:
    """What one embedding did: the scalar feature values and whether MEWMA fired."""

    distance: float | None  # None while the reference is being fitted
    cosine: float | None
    drift: bool


class EmbeddingStream:
    """One key's reference and MEWMA: fit, hold out, monitor, re-learn after an alarm.

    Distances are produced from the first held-out vector on; feed them to the
    ``embedding_distance`` feature stream, and re-learn that stream as well whenever
    :attr:`EmbeddingStep.drift` is set or :meth:`relearn` is called.
    """

    def __init__(
        self,
        target_arl: float,
        fit_n: int = 200,
        calib_n: int = 200,
        rank: int = 32,
        min_shrinkage: float = 0.3,
        lam: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.target_arl = target_arl
        self.fit_n = fit_n
        self.calib_n = calib_n
        self.rank = rank
        self.min_shrinkage = min_shrinkage
        self.lam = lam
        self.seed = seed
        self.relearn()

    def relearn(self) -> None:
        self.reference = EmbeddingReference(self.fit_n, self.calib_n, self.rank, self.min_shrinkage)
        self.mewma: MewmaDetector | None = None

    def update(self, v: Vector) -> EmbeddingStep:
        ref = self.reference
        if not ref.fitted:
            ref.add(v)
            return EmbeddingStep(None, None, False)
        step = EmbeddingStep(ref.mahalanobis(v), ref.cosine_to_centroid(v), False)
        if self.mewma is None:
            ref.add(v)
            if ref.calibrated:
                self.mewma = MewmaDetector(ref, self.target_arl, self.lam, self.seed)
                ref.discard_held_out_vectors()
            return step
        if self.mewma.update(v):
            self.relearn()
            return EmbeddingStep(step.distance, step.cosine, True)
        return step

    def statistics(self) -> dict[str, tuple[float, float]]:
        """detector → (statistic, threshold), like ``FeatureStream.statistics``."""
        m = self.mewma
        return {} if m is None else {"mewma": (m.statistic, m.threshold)}
