"""Per-key embedding reference and the multivariate EWMA detector (numpy only, no I/O).

A key's sampled output embeddings are watched two ways (SPEC §2):

* ``embedding_distance``: the Mahalanobis distance of each embedding to the key's reference
  (mean, Ledoit–Wolf shrunk covariance), fed to a
  :class:`~driftmon.core.detectors.FeatureStream` as its *normal score* against the
  held-out distances (:meth:`EmbeddingReference.distance_score`, a monotone transform).
  The raw distance has a long *lower* tail: answers like those the reference was fitted
  on lie far closer than new ones. A 300-value warm-up summarised by 48 quantiles drops
  its extreme 1 %, so the Page-Hinkley threshold under-covered the lower side (3.3× the
  budgeted false alarms at 10⁶ in ``benchmarks/embedding_calibration.py``; log(distance)
  stretches that tail further and did not help). Normal scores are bounded (±2.8 with
  200 held-out distances) and near-Gaussian, a shape the warm-up summarises well.
* ``embedding``/``mewma``: a multivariate EWMA of the whitened embedding, for small mean
  shifts spread over many coordinates that no single distance reveals.

The reference is learned from two disjoint parts of the warm-up. The *fit* part gives the
mean and covariance. The *calibration* part is held out: its distances and its whitened
vectors are what a new answer from the same model looks like, prompt novelty included,
and the MEWMA threshold is set by simulating on them. Fit-part vectors would look closer
to the reference than any future answer and give thresholds that fire on unseen prompts.

The covariance is kept as its top ``rank`` eigen-directions plus one variance for the rest
(probabilistic PCA), so a key costs ``rank × dim`` floats instead of ``dim²``. ``rank =
32`` by default: 200 fit vectors give about six per direction; on MiniLM embeddings of
real answers the top 32 carry half the variance. The MEWMA watches every coordinate,
whitened under that model: style changes (a preamble, truncation, refusals) move answers
mostly outside the top directions, which hold the spread between topics; restricted to
the top 32 (as first built, with λ = 0.1) the chart missed every ρ = 1 preamble and 10 %
refusal stream of ``benchmarks/partial_shift.py`` at the default budget.

Detection delays and false-alarm rates on real answers are printed by
``benchmarks/partial_shift.py``, ``benchmarks/embedding_calibration.py`` and
``benchmarks/detection.py --embeddings``. Calibrating a MEWMA threshold is a simulation of
2 000 chains: about a second of CPU per key, at its 400th embedded event and after each
alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

_NORMAL = NormalDist()

FloatArray = npt.NDArray[np.float64]
Vector = npt.NDArray[np.floating[Any]]

VARIANCE_FLOOR = 1e-10  # a key whose outputs never vary still gets finite distances
SIM_CHAINS = 2000
SIM_STEPS = 1000
POOL = 8192  # Gaussian smoothing rows the simulation draws from
EXPLICIT_DIRECTIONS = 32  # held-out principal directions simulated from the rows themselves
TAIL_QUANTILE = 0.999  # the exponential tail is fitted above this quantile of T²
# Real held-out data put T² near ``dim``; the floor only matters when the outputs never
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

    The covariance is probabilistic PCA: the top ``rank`` directions of the shrunk
    covariance, one variance for the rest. :meth:`whitened` maps an embedding to all of
    its ``dim`` coordinates, whitened under that covariance (the MEWMA's input, so a
    shift in any direction counts). :meth:`mahalanobis` is the distance under the same
    model restricted to the top ``distance_rank`` directions: with 200 fit vectors the top
    32 directions memorise the fit set (its own answers lie ~2 held-out standard
    deviations closer than new ones, and answers of another run to the same prompts
    ~1.5), so a stream that repeats fit prompts would see its distance move when the
    answers change but the model does not; 8 directions cut that to a third.

    :meth:`distance_score` maps a distance to its normal score against the held-out
    distances (what the ``embedding_distance`` detectors are fed); :meth:`score_distance`
    maps a score back to a distance (for display).

    >>> rng = np.random.default_rng(0)
    >>> ref = EmbeddingReference(fit_n=100, calib_n=50, rank=4, distance_rank=2)
    >>> for v in rng.normal(size=(150, 8)):
    ...     ref.add(v)
    >>> ref.calibrated, ref.held_out_whitened.shape
    (True, (50, 8))
    >>> ref.mahalanobis(np.zeros(8)) < ref.mahalanobis(np.full(8, 3.0))
    True
    >>> [round(ref.distance_score(d), 2) for d in (0.0, np.median(ref.held_out_distances), 1e9)]
    [-2.33, 0.0, 2.33]
    >>> d = float(np.median(ref.held_out_distances)) * 1.01
    >>> abs(ref.score_distance(ref.distance_score(d)) - d) < 1e-9
    True
    """

    def __init__(
        self,
        fit_n: int = 200,
        calib_n: int = 200,
        rank: int = 32,
        min_shrinkage: float = 0.3,
        distance_rank: int | None = 8,
    ) -> None:
        if fit_n < 2 or calib_n < 2 or rank < 1 or not 0.0 <= min_shrinkage <= 1.0:
            raise ValueError("need fit_n ≥ 2, calib_n ≥ 2, rank ≥ 1, 0 ≤ min_shrinkage ≤ 1")
        self.fit_n = fit_n
        self.calib_n = calib_n
        self.rank = rank
        self.min_shrinkage = min_shrinkage
        self.distance_rank = rank if distance_rank is None else min(distance_rank, rank)
        self.shrinkage = math.nan
        self._pending: list[FloatArray] = []
        self._held_out: list[npt.NDArray[np.float32]] = []
        self._held_out_d: list[float] = []
        self._mean = np.zeros(0)
        self._mean_norm = 0.0
        self._basis = np.zeros((0, 0), dtype=np.float32)  # rows: top eigen-directions
        self._inv_sqrt = np.zeros(0)
        self._inv_rest = 0.0
        self._rest_scale = 0.0  # 1/σ_rest: whitening outside the top directions
        self._top_gain = np.zeros(0)  # 1/σ_i − 1/σ_rest along the top directions
        self._dist_inv = np.zeros(0)  # 1/σ_i² of the distance's directions
        self._dist_inv_rest = 0.0
        self.held_out_distances = np.zeros(0)
        self._score_d = np.zeros(0)  # held-out distances, sorted (a cache, not pickled)
        self.held_out_whitened = np.zeros((0, 0), dtype=np.float32)
        self.held_out_mean = np.zeros(0)

    @property
    def fitted(self) -> bool:
        return self._mean.size > 0

    @property
    def calibrated(self) -> bool:
        return self.held_out_distances.size > 0

    @property
    def mean(self) -> FloatArray:
        return self._mean

    @property
    def dim(self) -> int:
        return int(self._mean.size)

    def add(self, v: Vector) -> None:
        """Learn from one warm-up vector; ignored once the reference is calibrated."""
        x = np.asarray(v, dtype=np.float64).ravel()
        if not self.fitted:
            self._pending.append(x)
            if len(self._pending) >= self.fit_n:
                self._fit(np.stack(self._pending))
                self._pending = []
        elif not self.calibrated:
            self._held_out.append(self.whitened(x).astype(np.float32))
            self._held_out_d.append(self.mahalanobis(x))
            if len(self._held_out) >= self.calib_n:
                rows = np.stack(self._held_out)
                self.held_out_mean = rows.mean(axis=0, dtype=np.float64)
                self.held_out_whitened = rows
                self.held_out_distances = np.asarray(self._held_out_d)
                self._held_out, self._held_out_d = [], []

    def _sorted_held_out(self) -> FloatArray:
        table: FloatArray | None = getattr(self, "_score_d", None)
        if table is None or table.size != self.held_out_distances.size:
            table = self._score_d = np.sort(self.held_out_distances.astype(np.float64))
        return table

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_score_d", None)  # rebuilt from held_out_distances on first use
        return state

    def distance_score(self, d: float) -> float:
        """Normal score of distance ``d`` against the held-out distances (calibrated only).

        The held-out distances, sorted, sit at probabilities (i + ½)/n; ``d`` gets the
        probability interpolated linearly between its neighbours (a tie: the middle of
        the tied positions; beyond the ends: the end position), then Φ⁻¹ of it. Monotone
        in ``d``, bounded by ±Φ⁻¹(1 − 1/(2n)), near N(0, 1) for new answers of the same
        model, whatever the shape of the distance's law.
        """
        xs = self._sorted_held_out()
        n = xs.size
        lo = int(np.searchsorted(xs, d, side="left"))
        hi = int(np.searchsorted(xs, d, side="right"))
        if hi > lo:  # equal to held-out distances
            u = 0.5 * (lo + hi) / n
        elif lo == 0:
            u = 0.5 / n
        elif lo == n:
            u = 1.0 - 0.5 / n
        else:
            a, b = float(xs[lo - 1]), float(xs[lo])
            u = (lo - 0.5 + (d - a) / (b - a)) / n
        return _NORMAL.inv_cdf(u)

    def score_distance(self, score: float) -> float:
        """The distance whose :meth:`distance_score` is ``score`` (inverse, for display)."""
        xs = self._sorted_held_out()
        n = xs.size
        if score != score or n == 0:
            return math.nan
        if n == 1:
            return float(xs[0])
        pos = min(max(_NORMAL.cdf(score) * n - 0.5, 0.0), n - 1.0)
        i = min(int(pos), n - 2)
        return float(xs[i] + (pos - i) * (xs[i + 1] - xs[i]))

    def discard_held_out_vectors(self) -> None:
        """Free the held-out vectors once the MEWMA threshold is set (the bulk of a key)."""
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
        self._rest_scale = math.sqrt(self._inv_rest)
        self._top_gain = self._inv_sqrt - self._rest_scale
        k = min(self.distance_rank, r)
        rest_k = max((mu * p - float(top[:k].sum())) / (p - k), VARIANCE_FLOOR)
        self._dist_inv = 1.0 / top[:k]
        self._dist_inv_rest = 1.0 / rest_k

    def _centered(self, v: Vector) -> tuple[FloatArray, FloatArray]:
        y = np.asarray(v, dtype=np.float64).ravel() - self._mean
        return y, self._basis @ y

    def whitened(self, v: Vector) -> FloatArray:
        """All ``dim`` coordinates of ``v`` whitened under the reference covariance.

        ``‖whitened(v)‖²`` is the full-rank squared Mahalanobis distance.
        """
        y, proj = self._centered(v)
        out: FloatArray = self._rest_scale * y + (proj * self._top_gain) @ self._basis
        return out

    def mahalanobis(self, v: Vector) -> float:
        """Distance of ``v`` to the reference (top ``distance_rank`` directions + the rest)."""
        y, proj = self._centered(v)
        k = self._dist_inv.size
        top = proj[:k]
        rest = max(float(y @ y) - float(top @ top), 0.0)
        return math.sqrt(float((top * top) @ self._dist_inv) + rest * self._dist_inv_rest)

    def cosine_to_centroid(self, v: Vector) -> float:
        """Cosine similarity of ``v`` to the reference mean (for display only)."""
        x = np.asarray(v, dtype=np.float64).ravel()
        denom = float(np.linalg.norm(x)) * self._mean_norm
        return float(x @ self._mean) / denom if denom > 0.0 else 0.0


@dataclass(frozen=True, slots=True)
class NullModel:
    """What a MEWMA's input looks like when nothing changed, in principal coordinates.

    ``rows``: the held-out rows' coordinates along their top principal directions,
    scaled by ``row_scale``, and ``noise`` the Gaussian smoothing added to each draw (a
    smoothed bootstrap). Beyond them a ``block`` of ``block_dim`` (effective) coordinates
    of variance ``block_var`` each. ``explicit_var`` is the model's variance along each
    explicit coordinate.
    """

    rows: FloatArray
    noise: float
    explicit_var: FloatArray
    block_dim: float
    block_var: float


def null_model(held_out: Vector, explicit: int = EXPLICIT_DIRECTIONS) -> NullModel:
    """The null law of whitened embeddings, learned from held-out rows (n × dim).

    The sample covariance of n ≪ dim rows is rank-deficient and its spectrum too spread
    (its Σc² is inflated by about (Σc)²/n), which would make thresholds needlessly high;
    a Gaussian with a shrunk spectrum instead misses the real answers' clusters (topics),
    whose bursts are what fires a chart on unseen prompts. So draws are held-out rows
    scaled by √keep plus isotropic Gaussian noise of the rest of the variance, with keep
    chosen so that the model's Σc² is the unbiased estimate (Ledoit–Wolf's δ − β).
    """
    rows = np.asarray(held_out, dtype=np.float64)
    n, p = rows.shape
    centered = rows - rows.mean(axis=0)
    gram = centered @ centered.T
    shrinkage = ledoit_wolf_shrinkage(centered, gram)
    lam, vec = np.linalg.eigh(gram)
    lam, vec = np.maximum(lam[::-1], 0.0), vec[:, ::-1]
    mu = max(float(lam.sum()) / (n * p), VARIANCE_FLOOR)
    # Spectrum μ + keep·(ĉ − μ): its dispersion keep²·‖Ĉ − μI‖² is (1 − s)·‖Ĉ − μI‖², the
    # unbiased estimate, where Ledoit–Wolf's own (1 − s)² would understate it.
    keep = math.sqrt(max(1.0 - shrinkage, 0.0))
    noise_var = (1.0 - keep) * mu
    k = min(explicit, n - 1, p)
    coords = vec[:, :k] * np.sqrt(lam[:k])
    coords -= coords.mean(axis=0)
    explicit_var = keep * lam[:k] / n + noise_var
    m = min(n - 1, p)  # directions the rows can span
    others = np.concatenate([keep * lam[k:m] / n + noise_var, np.full(p - m, noise_var)])
    tr, tr2 = float(others.sum()), float((others * others).sum())
    block_dim = tr * tr / tr2 if tr2 > 0.0 else 0.0
    block_var = tr2 / tr if tr > 0.0 else 0.0
    return NullModel(
        coords * math.sqrt(keep), math.sqrt(noise_var), explicit_var, block_dim, block_var
    )


def simulate_mewma(
    model: NullModel,
    lam: float,
    reference_n: int | None,
    seed: int = 0,
    chains: int = SIM_CHAINS,
    steps: int = SIM_STEPS,
) -> FloatArray:
    """T² of ``chains`` null MEWMA chains over ``steps`` updates past a burn-in.

    The false-alarm *rate* is averaged over what the key's warm-up could not pin down:

    * each chain has its own offset drawn from the reference mean's error (covariance
      model/``reference_n``; None: no error), since every later update is measured
      against that one estimate;
    * each chain draws from its own bootstrap resample of the held-out rows (centred),
      since 200 answers show the law of answers to unseen prompts, clusters included,
      only roughly; without it, bursts of related answers fired about one
      no-change stream in 70 at a 3·10⁷ budget.

    Draws are the resampled row plus its smoothing noise (from a pool of ``POOL``
    Gaussian rows). The block of equal-variance coordinates is simulated exactly by its
    coordinate along the offset plus the squared norm of the others (a recursion).
    """
    n, k = model.rows.shape
    burn = math.ceil(5.0 / lam)
    rng = np.random.default_rng(seed)
    noise_pool = model.noise * rng.standard_normal((POOL, k))
    chain = np.arange(chains)
    resample = rng.integers(0, n, size=(chains, n), dtype=np.int32)
    counts = np.zeros((chains, n))
    np.add.at(counts, (chain[:, None], resample), 1.0)
    chain_mean = counts @ model.rows / n
    if reference_n:
        offset = rng.standard_normal((chains, k)) * np.sqrt(model.explicit_var / reference_n)
        block_offset = np.sqrt(
            model.block_var / reference_n * rng.chisquare(max(model.block_dim, 1e-9), chains)
        )
    else:
        offset, block_offset = np.zeros((chains, k)), np.zeros(chains)
    q, scale = 1.0 - lam, (2.0 - lam) / lam
    sd = math.sqrt(model.block_var)
    df = max(model.block_dim - 2.0, 0.0)
    ewma = offset.copy()
    along = block_offset.copy()  # the block's coordinate along its offset
    others = np.zeros(chains)  # squared norm of the block's other (mean-free) coordinates
    step_offset = lam * (offset - chain_mean)
    stats = np.empty((steps, chains))
    for t in range(burn + steps):
        rows = resample[chain, rng.integers(0, n, chains)]
        ewma *= q
        ewma += step_offset
        ewma += lam * (model.rows[rows] + noise_pool[rng.integers(0, POOL, chains)])
        g = rng.standard_normal((3, chains))
        along = q * along + lam * (block_offset + sd * g[0])
        chi = np.maximum(df + math.sqrt(2.0 * df) * g[2], 0.0)  # χ²(df), normal approx.
        others = (q * np.sqrt(others) + lam * sd * g[1]) ** 2 + lam * lam * model.block_var * chi
        if t >= burn:
            stats[t - burn] = scale * (np.einsum("ij,ij->i", ewma, ewma) + along * along + others)
    return stats


def tail_threshold(stats: FloatArray, lam: float, target_arl: float) -> float:
    """The T² level upcrossed once per ``target_arl`` updates in the simulated chains.

    An excursion counts once: a level is crossed at t when every statistic of the
    previous 1/λ updates (the EWMA's memory) was at or below it. A target beyond what
    was simulated is reached with an exponential tail, log(upcrossings) fitted linearly
    in the level over the top 0.1% of the statistic; for the near-Gaussian tails of
    MEWMA statistics that errs high (fewer false alarms than budgeted).
    """
    window = math.ceil(1.0 / lam)
    before = sliding_window_view(stats[:-1], window, axis=0).max(axis=-1).ravel()
    after = stats[window:].ravel()
    rising = after > before
    starts, ends = np.sort(before[rising]), np.sort(after[rising])
    top = float(stats.max())

    def upcrossings(levels: FloatArray) -> npt.NDArray[np.intp]:
        # A rising step from a to b crosses every level in [a, b).
        counts: npt.NDArray[np.intp] = np.searchsorted(
            starts, levels, side="right"
        ) - np.searchsorted(ends, levels, side="right")
        return counts

    wanted = before.size / target_arl
    if wanted >= MIN_UPCROSSINGS:  # within the simulation: read it off
        levels = np.linspace(float(np.median(stats)), top, 1024)
        below = upcrossings(levels) <= wanted
        return float(levels[np.argmax(below)]) if below.any() else top
    levels = np.linspace(float(np.quantile(stats, TAIL_QUANTILE)), top, 256)
    counts = upcrossings(levels)
    usable = counts >= MIN_UPCROSSINGS
    if usable.sum() < 3:  # degenerate held-out data (e.g. identical outputs)
        return 2.0 * top + 1.0
    slope, intercept = np.polyfit(
        levels[usable], np.log(counts[usable]), 1, w=np.sqrt(counts[usable])
    )
    if slope >= 0.0:
        return 2.0 * top + 1.0
    return float((math.log(wanted) - intercept) / slope)


def mewma_threshold(
    held_out: Vector,
    lam: float,
    target_arl: float,
    seed: int = 0,
    reference_n: int | None = None,
    chains: int = SIM_CHAINS,
    steps: int = SIM_STEPS,
) -> float:
    """T² threshold giving about ``target_arl`` updates between false alarms.

    ``held_out``: whitened held-out rows, centred as the live stream will be. Runs
    :func:`simulate_mewma` on their :func:`null_model` (with the reference mean's error
    when ``reference_n`` vectors estimated it) and reads the level off
    :func:`tail_threshold`.
    """
    if target_arl <= 1.0 or not 0.0 < lam <= 1.0:
        raise ValueError("need target_arl > 1 and 0 < lam ≤ 1")
    model = null_model(held_out)
    stats = simulate_mewma(model, lam, reference_n, seed, chains, steps)
    return tail_threshold(stats, lam, target_arl)


class MewmaDetector:
    """Multivariate EWMA of an embedding's whitened coordinates (all of them).

    With whitened input z, e_t = (1 − λ)e_{t−1} + λ·(z_t − c) and
    T² = ‖e_t‖² · (2 − λ)/λ, the asymptotic-covariance form of Lowry et al. (1992).
    The centre c is the mean of the fit and held-out vectors together (the fit part's
    whitened mean is 0 by construction), so the reference mean rests on
    ``fit_n + calib_n`` vectors. The threshold comes from :func:`mewma_threshold` on the
    held-out vectors, with that mean's error; ``target_arl`` counts updates (embedded
    events). λ = 0.02 by default: a style change moves each answer's embedding by a
    fraction of the spread between topics, so the chart must average ~100 answers
    (with λ = 0.1 a 10 % refusal share barely moves T² against its null spread).
    After an alarm the EWMA restarts; the caller should learn a new reference.

    >>> rng = np.random.default_rng(1)
    >>> def draw(n, shift=0.0):  # 8 strong directions out of 16, then a shift along one
    ...     x = rng.normal(size=(n, 16)) * 0.1
    ...     x[:, :8] += rng.normal(size=(n, 8))
    ...     x[:, 0] += shift
    ...     return x
    >>> ref = EmbeddingReference(fit_n=200, calib_n=200, rank=8)
    >>> for v in draw(400):
    ...     ref.add(v)
    >>> det = MewmaDetector(ref, target_arl=5_000)
    >>> stream = np.vstack([draw(300), draw(100, shift=1.2)])
    >>> next(i for i, v in enumerate(stream) if det.update(v))
    328
    """

    def __init__(
        self, reference: EmbeddingReference, target_arl: float, lam: float = 0.02, seed: int = 0
    ) -> None:
        if not reference.calibrated:
            raise ValueError("the reference must be calibrated before a MEWMA is built on it")
        self.reference = reference
        self.target_arl = target_arl
        self.lam = lam
        self.seed = seed
        n_fit, n_ho = reference.fit_n, reference.calib_n
        self._center = reference.held_out_mean * (n_ho / (n_fit + n_ho))
        held_out = reference.held_out_whitened.astype(np.float64) - self._center
        self.threshold = max(
            mewma_threshold(held_out, lam, target_arl, seed, reference_n=n_fit + n_ho),
            MIN_THRESHOLD,
        )
        self._reset()

    def reset(self) -> None:
        """Restart the EWMA (the reference and threshold stay)."""
        self._reset()

    def _reset(self) -> None:
        self._ewma = np.zeros(self._center.size)
        self.statistic = 0.0
        self.drift_detected = False

    def update(self, v: Vector) -> bool:
        """Feed one embedding; True when T² crosses the threshold."""
        z = self.reference.whitened(v)
        z -= self._center
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
    """What one embedding did: the scalar feature values and whether MEWMA fired.

    ``scores`` are the values to feed, in order, to the ``embedding_distance`` feature
    stream: normal scores of distances (:meth:`EmbeddingReference.distance_score`). Empty
    while the held-out distances are collected, all of them at once when the reference is
    calibrated, then one per embedding.
    """

    distance: float | None  # None while the reference is being fitted
    cosine: float | None
    drift: bool
    scores: tuple[float, ...] = ()


class EmbeddingStream:
    """One key's reference and MEWMA: fit, hold out, monitor, re-learn after an alarm.

    Distances are produced from the first held-out vector on. Their normal scores
    (:attr:`EmbeddingStep.scores`) are what to feed the ``embedding_distance`` feature
    stream: the held-out ones all at once when the reference is calibrated (so the
    stream's warm-up ends where it would on distances fed one by one), then one per
    embedding. Re-learn that stream as well whenever :attr:`EmbeddingStep.drift` is set
    or :meth:`relearn` is called.
    """

    def __init__(
        self,
        target_arl: float,
        fit_n: int = 200,
        calib_n: int = 200,
        rank: int = 32,
        min_shrinkage: float = 0.3,
        lam: float = 0.02,
        seed: int = 0,
        distance_rank: int | None = 8,
    ) -> None:
        self.target_arl = target_arl
        self.fit_n = fit_n
        self.calib_n = calib_n
        self.rank = rank
        self.min_shrinkage = min_shrinkage
        self.lam = lam
        self.seed = seed
        self.distance_rank = distance_rank
        self.relearn()

    def relearn(self) -> None:
        self.reference = EmbeddingReference(
            self.fit_n, self.calib_n, self.rank, self.min_shrinkage, self.distance_rank
        )
        self.mewma: MewmaDetector | None = None

    def update(self, v: Vector) -> EmbeddingStep:
        ref = self.reference
        if not ref.fitted:
            ref.add(v)
            return EmbeddingStep(None, None, False)
        distance, cosine = ref.mahalanobis(v), ref.cosine_to_centroid(v)
        if self.mewma is None:
            ref.add(v)
            if not ref.calibrated:
                return EmbeddingStep(distance, cosine, False)
            self.mewma = MewmaDetector(ref, self.target_arl, self.lam, self.seed)
            ref.discard_held_out_vectors()
            scores = tuple(ref.distance_score(d) for d in ref.held_out_distances)
            return EmbeddingStep(distance, cosine, False, scores)
        if self.mewma.update(v):
            self.relearn()
            return EmbeddingStep(distance, cosine, True)
        return EmbeddingStep(distance, cosine, False, (ref.distance_score(distance),))

    def statistics(self) -> dict[str, tuple[float, float]]:
        """detector → (statistic, threshold), like ``FeatureStream.statistics``."""
        m = self.mewma
        return {} if m is None else {"mewma": (m.statistic, m.threshold)}
