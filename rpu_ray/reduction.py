"""Dataset reduction of rPU-VAE: keep the subset where the learned factors vary least.

Paper section 4.2 (Algorithm 1, Fig. 3); the authors' `RPUVAEExplorer.reduce_dataset`
(original-code-spec sections 5.2-5.4, 8.2 item 8). Pure numpy/scipy: the driver calls `reduce`
after each metaEpoch with the surrogate labels of the current data set (encoder means of the
active latents of the best VAE, shape (N, k)) and applies the returned positions to that set.

Per active latent, with v = that latent's labels of the N points:
  * `order` = stable argsort of v, `s = v[order]`, `gaps = diff(s)` (N - 1 values; gaps[p]
    separates sorted positions p and p + 1);
  * peaks = `scipy.signal.find_peaks(gaps[edge:N-1-edge], height=med + 7 * sd, distance=d)`
    shifted back by `edge`, with edge = (N-1) // 15 (both 1/15 tails ignored, where a continuous
    label's sparse outliers make large gaps), d = (N-1) // 50, med = median of the trimmed gaps
    and sd = std of the trimmed gaps below med + 4 * std(trimmed gaps);
  * an *interval* is a run of sorted positions [start, stop) between peaks (a cluster of label
    values); its score is (lower adjacent peak height) / (mean gap inside), best first;
  * one latent: the `choice`-th ranked interval is the new data set; several latents: the top 5
    intervals of every latent are intersected (one interval per latent, all combinations) and
    the `choice`-th ranked intersection is the new data set.
`choice` is the leaf-run index x_peak (0-based) for the leaf-run's first reduction (of the
x-model labels of the full data set) and 0 for every later one.

Two modes, `ReductionConfig.compat`:

compat=True reproduces the authors' code, with its crashes turned into stop reasons:
  * an interval between peaks a < b is the sorted positions [a, b): it contains the point just
    left of the gap a (the last point of the previous cluster) and misses this cluster's last
    point b; its mean gap is mean(gaps[a:b]), which includes the peak gap gaps[a] itself;
  * one peak p: the sets are [0, p) and [p, N) for several latents, [0, p) or [p, N-2) for one
    latent (the last *two* sorted points are dropped; spec 5.4 says one); at the root
    (`root=True`) the single latent's sides are taken in positional order (choice 0 = lower
    side, whatever its quality), below the root the side with the smaller mean gap comes first;
  * the outer intervals (below the first and above the last peak) exist only with several
    latents and at most 3 peaks, as [0, first) and [last, N-2) with a constant pseudo peak
    height of 1.0 (in label units) on the data-end side;
  * several latents: intersections with more than 5 points are ranked by |size - median size|
    (closest to the median first; ties in the authors' enumeration order); a single-peak latent
    contributes both sides whatever top_k is;
  * `peak_side_cutoff` trims the chosen interval only with one latent;
  * indices keep the authors' order: latent-value order with one latent (the next metaEpoch's
    UDR sample depends on the data set order), ascending with several;
  * a data set of N <= 50 points stops with "too_few_points" (the authors' find_peaks raises on
    distance 0), a choice beyond the candidates stops with "choice_unavailable" (IndexError or
    abort in the authors' code), and so does a root choice >= 2 with several latents when one
    of them has a single peak (their IndexError, spec 8.2 item 8).

compat=False (default) follows the paper's intent; each fix and why:
  1. An interval between peaks a < b is the sorted positions [a+1, b] = the points strictly
     between the two large gaps, i.e. exactly one cluster (the paper's "interval in between the
     peaks"); the off-by-one mixes a point of the neighbouring cluster into the subset, which is
     the variation the reduction is meant to remove.
  2. The mean gap is over the gaps inside the cluster, gaps[a+1:b] (the paper: "the mean within
     the interval"). Including the boundary peak gap, as the authors do, makes it dominate the
     mean of a tight cluster, so their score is about (cluster size) * min(h) / h_a and ranks
     clusters by size rather than by how little the factor varies inside them.
  3. The outer intervals [0, first] and [last+1, N-1] are always candidates. Their one real
     adjacent peak is the lower adjacent peak (the end of the data acts as an infinitely large
     gap), instead of the authors' pseudo height 1.0, which is in label units and so arbitrary.
     Without them a one-latent reduction could never keep the lowest or highest cluster.
  4. One peak is not a special case: its two sides are the two outer intervals, ranked by the
     same score (below the root this equals the authors' smaller-mean-gap rule; at the root
     choice 0 is now the better side, not the lower one).
  5. Small data sets: d = max(1, (N-1) // 50) and the tails are trimmed as gaps[edge:N-1-edge]
     (the authors' gaps[edge:-edge] is empty for edge 0), so sets of 11..50 points are reduced
     instead of crashing; only N <= size_d_min stops ("too_few_points"): no strict subset of
     such a set can reach size_d_min.
  6. Candidates smaller than size_d_min (intervals, per latent before top_k, and intersections)
     are dropped before choosing: a tiny, tight group of outliers would otherwise rank first and
     end the leaf-run although a usable subset exists (paper: "while trying to keep the resulting
     dataset as large as possible"). "below_min_size" means that nothing usable remains.
  7. Intersections are ranked by the scores of their intervals, leximin (the smallest score
     first, then the next smallest, ...), then by size (larger first), then by enumeration
     order. The paper intersects each latent's interval of least variation, and an intersection
     varies in every latent at most as much as that latent's interval, so the intersection of
     the best intervals comes first when it is large enough. The authors' median-size rule
     ignores quality (with the near-equal cells of a grid it is an arbitrary pick); a
     largest-first rule would prefer intervals that merged two clusters over a missed gap, i.e.
     the most remaining variation.
  8. `peak_side_cutoff` trims every candidate interval (the authors compute it for several
     latents too but discard it). Default 0: no effect.
  9. Indices are always ascending.
Both modes: stable sorts everywhere (the authors' numpy quicksort only differs on tied labels);
intersections are found by grouping the points by their per-latent interval (the intervals of a
latent are disjoint), which gives the authors' set of intersections without enumerating the
top_k ** k combinations; no stop raises: every stop is a `Reduction` with a `stop_reason` from
`STOP_REASONS` and a message.

Active latents (paper: KL(q(z_a|x) || p(z_a)) > threshold_{z_active}): the authors threshold
their pseudo-KL (`rpu_ray.metrics.representation.authors_pseudo_kl`) at 1.0. We use the true
Gaussian KL (`gaussian_kl`) by default with `GAUSSIAN_KL_ACTIVE_THRESHOLD`, see its comment.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.signal import find_peaks

# The authors' active-latent threshold, calibrated on their pseudo-KL (spec 3.2, 5.3).
PSEUDO_KL_ACTIVE_THRESHOLD = 1.0
# The true-Gaussian-KL threshold equivalent to pseudo-KL > 1, derived (not yet calibrated on
# trained models): for an active latent whose aggregate posterior matches the prior,
# E[mu^2] + sigma^2 = 1, with a common log std -a, the pseudo-KL is
# 0.5 * (E[mu^2] + e^a - a - 1) = 0.5 * (e^a - e^-2a - a) and the Gaussian KL is exactly a; the
# pseudo-KL reaches 1 at a = 1.188 nats. Simulations with a spread of log std (sd 0.5) around
# that value give the same correspondence within 0.03. Both grow with a, so they order latents
# alike, but the mapping depends on E[mu^2] + sigma^2. Checked on trained models (the demo's
# best VAEs, benchmarks/RESULTS.md "Active-latent threshold"): both estimators select the same
# latents at their thresholds.
GAUSSIAN_KL_ACTIVE_THRESHOLD = 1.19

STOP_NO_ACTIVE_LATENT = "no_active_latent"
STOP_TOO_FEW_POINTS = "too_few_points"
STOP_NO_PEAK = "no_peak"
STOP_NO_INTERSECTION = "no_intersection"
STOP_CHOICE_UNAVAILABLE = "choice_unavailable"
STOP_BELOW_MIN_SIZE = "below_min_size"
STOP_REASONS = (
    STOP_NO_ACTIVE_LATENT,  # labels with no column: no latent above the KL threshold
    STOP_TOO_FEW_POINTS,  # data set too small to be reduced (see the mode notes above)
    STOP_NO_PEAK,  # some active latent has no gap peak: its labels form no separable cluster
    STOP_NO_INTERSECTION,  # no intersection of the latents' candidate intervals is big enough
    STOP_CHOICE_UNAVAILABLE,  # fewer ranked candidates than `choice` + 1
    STOP_BELOW_MIN_SIZE,  # the subset (compat) / every candidate (fixed) is below size_d_min
)


@dataclass(frozen=True)
class ReductionConfig:
    """Every constant of the reduction; defaults are the authors' values.

    Attributes:
      active_kl_threshold: a latent is active if its KL > this. None (default): the value
        calibrated for the KL in use (`active_threshold`): `GAUSSIAN_KL_ACTIVE_THRESHOLD` for
        the true Gaussian KL, the authors' `PSEUDO_KL_ACTIVE_THRESHOLD` (1.0) for their
        pseudo-KL (`eval.kl: authors`).
      tail_divisor: edge = (N-1) // tail_divisor gaps at each end are ignored by the peak search.
      distance_divisor: find_peaks distance = (N-1) // distance_divisor (fixed mode: at least 1).
      outlier_sds: gaps >= median + outlier_sds * std are left out of the spread estimate sd.
      height_sds: a peak needs a gap >= median + height_sds * sd.
      top_k: candidate intervals per latent when intersecting several latents.
      min_intersection_size: intersections with fewer points are discarded (authors: > 5).
      size_d_min: smallest accepted reduced data set (authors: < 10 images stops).
      peak_side_cutoff: fraction of an interval's points trimmed from each end, in [0, 0.5).
      compat: reproduce the authors' code instead of the fixed behaviour (module docstring).
    """

    active_kl_threshold: float | None = None
    tail_divisor: int = 15
    distance_divisor: int = 50
    outlier_sds: float = 4.0
    height_sds: float = 7.0
    top_k: int = 5
    min_intersection_size: int = 6
    size_d_min: int = 10
    peak_side_cutoff: float = 0.0
    compat: bool = False

    def __post_init__(self) -> None:
        if self.active_kl_threshold is not None and not math.isfinite(self.active_kl_threshold):
            raise ValueError(f"active_kl_threshold must be finite, got {self.active_kl_threshold}")
        # 2 * edge must stay below the number of gaps, so the trimmed gaps are never empty.
        if self.tail_divisor < 3:
            raise ValueError(f"tail_divisor must be >= 3, got {self.tail_divisor}")
        for name in ("distance_divisor", "top_k", "min_intersection_size", "size_d_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.outlier_sds > 0 and self.height_sds >= 0):
            raise ValueError("outlier_sds must be > 0 and height_sds >= 0")
        if not 0.0 <= self.peak_side_cutoff < 0.5:
            raise ValueError(f"peak_side_cutoff must be in [0, 0.5), got {self.peak_side_cutoff}")

    def active_threshold(self, kl: str) -> float:
        """The active-latent threshold for KL values of kind `kl` ("gaussian" or "authors",
        `rpu_ray.evaluation.per_latent_kl`)."""
        if self.active_kl_threshold is not None:
            return self.active_kl_threshold
        return PSEUDO_KL_ACTIVE_THRESHOLD if kl == "authors" else GAUSSIAN_KL_ACTIVE_THRESHOLD

    @classmethod
    def authors(cls) -> ReductionConfig:
        """The authors' exact behaviour: compat mode, threshold for their pseudo-KL."""
        return cls(active_kl_threshold=PSEUDO_KL_ACTIVE_THRESHOLD, compat=True)


@dataclass(frozen=True, eq=False)
class GapPeaks:
    """One latent's sorted labels, their gaps and the gap peaks (positions into `gaps`)."""

    order: np.ndarray  # (N,) int64, stable argsort of the labels
    sorted_values: np.ndarray  # (N,) labels[order]
    gaps: np.ndarray  # (N-1,) gaps[p] = sorted_values[p+1] - sorted_values[p]
    peaks: np.ndarray  # (P,) int64 ascending positions into gaps
    heights: np.ndarray  # (P,) gaps[peaks]
    height_threshold: float  # find_peaks height: median + height_sds * sd (inf: too few gaps)
    distance: int  # find_peaks distance
    edge: int  # gaps ignored at each end

    @property
    def num_points(self) -> int:
        return int(self.order.size)


@dataclass(frozen=True)
class Interval:
    """Sorted positions [start, stop) of one latent, i.e. the points order[start:stop].

    low/high are the label values of its first and last point; left_height/right_height the
    gaps bounding it (inf: the end of the data in fixed mode, see the module docstring);
    mean_gap the mean gap inside it; score = min(left_height, right_height) / mean_gap (inf if
    every gap inside is 0).
    """

    start: int
    stop: int
    low: float
    high: float
    left_height: float
    right_height: float
    mean_gap: float
    score: float

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class LatentDiagnostics:
    """What the reduction saw on one active latent (for the report)."""

    num_peaks: int
    height_threshold: float
    num_intervals: int  # ranked intervals found
    num_candidates: int  # intervals that could be chosen (after size filter and top_k)
    chosen: Interval | None  # the interval of this latent behind the chosen subset


@dataclass(frozen=True, eq=False)
class Reduction:
    """Outcome of `reduce`: the new subset, or why there is none.

    Attributes:
      indices: int64 positions into the current data set (ascending, except compat with one
        latent: the authors' latent-value order), or None when stopped.
      stop_reason: None on success, else one of `STOP_REASONS`.
      message: human-readable account of the decision.
      num_points: N, the size of the current data set.
      choice: the requested rank.
      latents: per active latent diagnostics (empty if stopped before the peak search).
      candidate_sizes: sizes of the ranked candidates (intervals with one latent, intersections
        with several), best first.
    """

    indices: np.ndarray | None
    stop_reason: str | None
    message: str
    num_points: int
    choice: int
    latents: tuple[LatentDiagnostics, ...] = ()
    candidate_sizes: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.stop_reason is None

    @property
    def size(self) -> int:
        return 0 if self.indices is None else int(self.indices.size)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary without the indices (for the driver's state and the report);
        strict JSON: infinite heights and scores (the ends of the data) become None."""
        return {
            "stop_reason": self.stop_reason,
            "message": self.message,
            "num_points": self.num_points,
            "size": self.size,
            "choice": self.choice,
            "candidate_sizes": list(self.candidate_sizes),
            "latents": [
                {
                    "num_peaks": lat.num_peaks,
                    "height_threshold": _finite_or_none(lat.height_threshold),
                    "num_intervals": lat.num_intervals,
                    "num_candidates": lat.num_candidates,
                    "chosen": None if lat.chosen is None else {
                        k: _finite_or_none(v) for k, v in dataclasses.asdict(lat.chosen).items()},
                }
                for lat in self.latents
            ],
        }


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def active_latents(kl: np.ndarray, threshold: float) -> np.ndarray:
    """Indices (int64, ascending) of the latents with KL strictly above `threshold`.

    Args:
      kl: (num_latents,) per-latent KL of the selected VAE (`gaussian_kl` with
        `GAUSSIAN_KL_ACTIVE_THRESHOLD`, or `authors_pseudo_kl` with `PSEUDO_KL_ACTIVE_THRESHOLD`).
      threshold: usually `ReductionConfig.active_kl_threshold`.
    """
    kl = np.asarray(kl, dtype=np.float64)
    if kl.ndim != 1:
        raise ValueError(f"kl must be a 1-D array (num_latents,), got shape {kl.shape}")
    if not np.all(np.isfinite(kl)):
        raise ValueError("kl must be finite")
    return np.flatnonzero(kl > threshold).astype(np.int64)


def gap_peaks(values: np.ndarray, config: ReductionConfig | None = None) -> GapPeaks:
    """Sorts one latent's labels and finds the large gaps with the authors' find_peaks rule.

    Never raises on finite data: fewer than 3 trimmed gaps simply give no peak. The distance is
    max(1, (N-1) // distance_divisor) in both modes; `reduce` stops compat mode before the
    authors' code would have crashed on distance 0.
    """
    config = config or ReductionConfig()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    order = np.argsort(values, kind="stable").astype(np.int64)
    sorted_values = values[order]
    gaps = np.diff(sorted_values)
    edge = gaps.size // config.tail_divisor
    distance = max(1, gaps.size // config.distance_divisor)
    trimmed = gaps[edge : gaps.size - edge]
    no_peaks = np.zeros(0, dtype=np.int64)
    if trimmed.size == 0:
        return GapPeaks(order, sorted_values, gaps, no_peaks, gaps[no_peaks], math.inf,
                        distance, edge)
    median = float(np.median(trimmed))
    body = trimmed[trimmed < median + config.outlier_sds * np.std(trimmed)]
    # body is empty only when all trimmed gaps are equal; such gaps have no peak whatever the
    # height (the authors get a NaN height there, with the same outcome).
    spread = float(np.std(body)) if body.size else 0.0
    height_threshold = median + config.height_sds * spread
    found, _ = find_peaks(trimmed, height=height_threshold, distance=distance)
    peaks = found.astype(np.int64) + edge
    return GapPeaks(order, sorted_values, gaps, peaks, gaps[peaks], height_threshold,
                    distance, edge)


def _interval(gp: GapPeaks, start: int, stop: int, left: float, right: float,
              mean_gap: float) -> Interval:
    lower = min(left, right)
    with np.errstate(divide="ignore"):
        score = float(np.float64(lower) / np.float64(mean_gap))
    return Interval(start, stop, float(gp.sorted_values[start]), float(gp.sorted_values[stop - 1]),
                    float(left), float(right), float(mean_gap), score)


def _fixed_intervals(gp: GapPeaks) -> list[Interval]:
    """Clusters between consecutive peaks plus the two outer ones, in positional order."""
    peaks = [int(p) for p in gp.peaks]
    heights = [float(h) for h in gp.heights]
    starts = [0] + [p + 1 for p in peaks]
    stops = [p + 1 for p in peaks] + [gp.num_points]
    lefts = [math.inf, *heights]
    rights = [*heights, math.inf]
    # Every interval has >= 2 points, hence >= 1 inner gap: find_peaks never returns the ends
    # of the trimmed gaps nor two adjacent positions.
    return [
        _interval(gp, a, b, lh, rh, float(np.mean(gp.gaps[a : b - 1])))
        for a, b, lh, rh in zip(starts, stops, lefts, rights, strict=True)
    ]


def _compat_intervals(gp: GapPeaks, num_latents: int) -> list[Interval]:
    """The authors' intervals (spec 5.4 items 4, 6, 7, 8), in their positional order."""
    g = gp.gaps
    peaks = [int(p) for p in gp.peaks]
    heights = [float(h) for h in gp.heights]
    end = gp.num_points - 2  # the authors' len(gaps) - 1 as the last bound
    if len(peaks) == 1:
        p, h = peaks[0], heights[0]
        upper_stop = gp.num_points if num_latents > 1 else end
        return [_interval(gp, 0, p, math.inf, h, float(np.mean(g[:p]))),
                _interval(gp, p, upper_stop, h, math.inf, float(np.mean(g[p:])))]
    intervals = [
        _interval(gp, a, b, ha, hb, float(np.mean(g[a:b])))
        for a, b, ha, hb in zip(peaks[:-1], peaks[1:], heights[:-1], heights[1:], strict=True)
    ]
    if num_latents > 1 and len(peaks) <= 3:
        first, last = peaks[0], peaks[-1]
        intervals.insert(0, _interval(gp, 0, first, 1.0, heights[0], float(np.mean(g[:first]))))
        intervals.append(_interval(gp, last, end, heights[-1], 1.0, float(np.mean(g[last:]))))
    return intervals


def rank_intervals(peaks: GapPeaks, config: ReductionConfig | None = None,
                   num_latents: int = 1) -> list[Interval]:
    """All candidate intervals of one latent, best first; empty without peaks.

    Fixed mode: ranked by score, ties by size (larger first), then position. Compat mode: the
    authors' interval set (which depends on `num_latents`), ranked as their
    argsort(score)[::-1] (ties: the later interval first).
    """
    config = config or ReductionConfig()
    if peaks.peaks.size == 0:
        return []
    if config.compat:
        intervals = _compat_intervals(peaks, num_latents)
        rank = np.argsort([iv.score for iv in intervals], kind="stable")[::-1]
        return [intervals[i] for i in rank]
    return sorted(_fixed_intervals(peaks), key=lambda iv: (-iv.score, -iv.size, iv.start))


def _trim(gp: GapPeaks, iv: Interval, cutoff: float) -> Interval:
    """The interval without int(size * cutoff) points at each end; score kept."""
    cut = int(iv.size * cutoff)
    if cut == 0:
        return iv
    start, stop = iv.start + cut, iv.stop - cut
    return dataclasses.replace(iv, start=start, stop=stop, low=float(gp.sorted_values[start]),
                               high=float(gp.sorted_values[stop - 1]))


def _members(gp: GapPeaks, iv: Interval) -> np.ndarray:
    return gp.order[iv.start : iv.stop]


def _intersections(gps: list[GapPeaks], candidates: list[list[Interval]], min_size: int
                   ) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Non-empty intersections of one candidate per latent with >= min_size points.

    Returns (combo, ascending positions) pairs, combo[j] = index into candidates[j], in
    lexicographic combo order. A latent's candidates are disjoint, so every point lies in at
    most one candidate per latent and the intersections are the groups of points with the same
    candidate in every latent.
    """
    codes = np.full((gps[0].num_points, len(gps)), -1, dtype=np.int64)
    for j, (gp, ivs) in enumerate(zip(gps, candidates, strict=True)):
        for c, iv in enumerate(ivs):
            codes[_members(gp, iv), j] = c
    inside = np.flatnonzero(np.all(codes >= 0, axis=1))
    if inside.size == 0:
        return []
    keys, inverse, counts = np.unique(codes[inside], axis=0, return_inverse=True,
                                      return_counts=True)
    grouped = inside[np.argsort(inverse.reshape(-1), kind="stable")]
    parts = np.split(grouped, np.cumsum(counts)[:-1])
    return [(tuple(int(c) for c in key), part)
            for key, part in zip(keys, parts, strict=True) if part.size >= min_size]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (num_points, num_active_latents), got shape "
                         f"{labels.shape}")
    if not np.all(np.isfinite(labels)):
        raise ValueError("labels must be finite (NaN or inf in the surrogate labels)")
    return labels


class _Outcome:
    """Builds the `Reduction` of one call; keeps the per-latent diagnostics in one place."""

    def __init__(self, num_points: int, choice: int, gps: list[GapPeaks],
                 ranked: list[list[Interval]]) -> None:
        self.num_points = num_points
        self.choice = choice
        self.gps = gps
        self.ranked = ranked
        self.num_candidates = [0] * len(gps)
        self.chosen: list[Interval | None] = [None] * len(gps)
        self.candidate_sizes: tuple[int, ...] = ()

    def _latents(self) -> tuple[LatentDiagnostics, ...]:
        return tuple(
            LatentDiagnostics(int(gp.peaks.size), float(gp.height_threshold), len(ivs), n, iv)
            for gp, ivs, n, iv in zip(self.gps, self.ranked, self.num_candidates, self.chosen,
                                      strict=True)
        )

    def stop(self, reason: str, message: str) -> Reduction:
        return Reduction(None, reason, message, self.num_points, self.choice, self._latents(),
                         self.candidate_sizes)

    def unavailable(self, what: str) -> Reduction:
        return self.stop(STOP_CHOICE_UNAVAILABLE,
                         f"choice {self.choice} requested but only {len(self.candidate_sizes)} "
                         f"ranked {what}")

    def done(self, indices: np.ndarray, what: str) -> Reduction:
        indices = indices.astype(np.int64)
        return Reduction(indices, None,
                         f"kept {indices.size} of {self.num_points} points ({what} ranked "
                         f"{self.choice} of {len(self.candidate_sizes)})",
                         self.num_points, self.choice, self._latents(), self.candidate_sizes)


def reduce(labels: np.ndarray, choice: int = 0, config: ReductionConfig | None = None, *,
           root: bool = False) -> Reduction:
    """Chooses the subset of the current data set where the active latents vary least.

    Args:
      labels: (N, k) surrogate labels of the current data set (encoder means of its k active
        latents); k = 0 stops with "no_active_latent".
      choice: rank of the interval (one latent) or intersection (several) to keep: the leaf-run
        index x_peak at the root, 0 below.
      config: constants and mode; default `ReductionConfig()`.
      root: compat mode only: True for a leaf-run's first reduction (the authors' iteration 0),
        where a single latent with a single peak takes its sides in positional order, and a
        choice >= 2 with several latents, one of them with a single peak, stops (their crash).

    Returns:
      A `Reduction`; stops are results, not exceptions.

    Raises:
      ValueError: labels not 2-D or not finite, negative choice.
    """
    config = config or ReductionConfig()
    labels = _check_labels(labels)
    choice = operator.index(choice)
    if choice < 0:
        raise ValueError(f"choice must be >= 0, got {choice}")
    num_points, num_latents = labels.shape
    if num_latents == 0:
        return Reduction(None, STOP_NO_ACTIVE_LATENT, "no active latent: nothing to reduce by",
                         num_points, choice)
    if config.compat:
        # The authors' find_peaks raises on distance 0 and their tail trim empties the gaps.
        too_few = ((num_points - 1) // config.distance_divisor < 1
                   or (num_points - 1) // config.tail_divisor < 1)
        rule = f"the authors' code needs N - 1 >= {config.distance_divisor}"
    else:
        too_few = num_points <= config.size_d_min
        rule = f"no strict subset can reach size_d_min = {config.size_d_min}"
    if too_few:
        return Reduction(None, STOP_TOO_FEW_POINTS, f"{num_points} points: {rule}", num_points,
                         choice)

    gps = [gap_peaks(labels[:, j], config) for j in range(num_latents)]
    ranked = [rank_intervals(gp, config, num_latents) for gp in gps]
    outcome = _Outcome(num_points, choice, gps, ranked)
    flat = [j for j, gp in enumerate(gps) if gp.peaks.size == 0]
    if flat:
        return outcome.stop(STOP_NO_PEAK, f"no gap peak in active latent(s) {flat}")
    if config.compat:
        return _reduce_compat(outcome, config, root)
    return _reduce_fixed(outcome, config)


def _reduce_fixed(out: _Outcome, config: ReductionConfig) -> Reduction:
    usable = [
        [iv for iv in (_trim(gp, iv, config.peak_side_cutoff) for iv in ivs)
         if iv.size >= config.size_d_min]
        for gp, ivs in zip(out.gps, out.ranked, strict=True)
    ]
    if len(out.gps) == 1:
        gp, candidates = out.gps[0], usable[0]
        out.num_candidates[0] = len(candidates)
        out.candidate_sizes = tuple(iv.size for iv in candidates)
        if not candidates:
            largest = max(iv.size for iv in out.ranked[0])
            return out.stop(STOP_BELOW_MIN_SIZE, f"largest interval has {largest} points < "
                                                 f"size_d_min = {config.size_d_min}")
        if out.choice >= len(candidates):
            return out.unavailable("intervals")
        chosen = out.chosen[0] = candidates[out.choice]
        return out.done(np.sort(_members(gp, chosen)), "interval")

    candidates = [ivs[: config.top_k] for ivs in usable]
    out.num_candidates = [len(ivs) for ivs in candidates]
    small = [j for j, ivs in enumerate(candidates) if not ivs]
    if small:
        return out.stop(STOP_BELOW_MIN_SIZE, f"every interval of latent(s) {small} has fewer "
                                             f"than size_d_min = {config.size_d_min} points")
    groups = _intersections(out.gps, candidates, config.min_intersection_size)
    if not groups:
        return out.stop(STOP_NO_INTERSECTION, f"no intersection with >= "
                                              f"{config.min_intersection_size} points")
    kept = [(combo, idx) for combo, idx in groups if idx.size >= config.size_d_min]
    if not kept:
        return out.stop(STOP_BELOW_MIN_SIZE, f"largest intersection has "
                                             f"{max(idx.size for _, idx in groups)} points < "
                                             f"size_d_min = {config.size_d_min}")

    def leximin(item: tuple[tuple[int, ...], np.ndarray]) -> tuple[Any, ...]:
        combo, idx = item
        scores = sorted(candidates[j][c].score for j, c in enumerate(combo))
        return (tuple(-s for s in scores), -idx.size, combo)

    kept.sort(key=leximin)
    out.candidate_sizes = tuple(idx.size for _, idx in kept)
    if out.choice >= len(kept):
        return out.unavailable("intersections")
    combo, idx = kept[out.choice]
    out.chosen = [candidates[j][c] for j, c in enumerate(combo)]
    return out.done(idx, "intersection")


def _reduce_compat(out: _Outcome, config: ReductionConfig, root: bool) -> Reduction:
    if len(out.gps) == 1:
        gp, ivs = out.gps[0], out.ranked[0]
        if gp.peaks.size == 1 and root:
            ivs = sorted(ivs, key=lambda iv: iv.start)
        out.num_candidates[0] = len(ivs)
        out.candidate_sizes = tuple(iv.size for iv in ivs)
        if out.choice >= len(ivs):
            return out.unavailable("intervals")
        chosen = out.chosen[0] = _trim(gp, ivs[out.choice], config.peak_side_cutoff)
        indices = _members(gp, chosen)
        what = "interval"
    else:
        single = [j for j, gp in enumerate(out.gps) if gp.peaks.size == 1]
        if root and single and out.choice >= 2:
            # The authors index the 1-peak bound list [0, p, N-2] with x_peak before
            # intersecting: IndexError.
            return out.stop(STOP_CHOICE_UNAVAILABLE,
                            f"choice {out.choice} at the root with single-peak latent(s) "
                            f"{single} (the authors' code raises IndexError)")
        # A single-peak latent contributes both sides, lower first; others their top_k.
        candidates = [sorted(ivs, key=lambda iv: iv.start) if gp.peaks.size == 1
                      else ivs[: config.top_k] for gp, ivs in zip(out.gps, out.ranked, strict=True)]
        out.num_candidates = [len(ivs) for ivs in candidates]
        groups = _intersections(out.gps, candidates, config.min_intersection_size)
        if not groups:
            return out.stop(STOP_NO_INTERSECTION, f"no intersection with >= "
                                                  f"{config.min_intersection_size} points")
        # The authors enumerate itertools.product with latent 0 varying fastest, then sort
        # stably by distance to the median size.
        groups.sort(key=lambda item: item[0][::-1])
        median = float(np.median([idx.size for _, idx in groups]))
        groups.sort(key=lambda item: abs(item[1].size - median))
        out.candidate_sizes = tuple(idx.size for _, idx in groups)
        if out.choice >= len(groups):
            return out.unavailable("intersections")
        combo, indices = groups[out.choice]
        out.chosen = [candidates[j][c] for j, c in enumerate(combo)]
        what = "intersection"
    if indices.size < config.size_d_min:
        return out.stop(STOP_BELOW_MIN_SIZE, f"chosen {what} has {indices.size} points < "
                                             f"size_d_min = {config.size_d_min}")
    return out.done(indices, what)
