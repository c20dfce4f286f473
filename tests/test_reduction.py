"""Dataset reduction (rpu_ray.reduction) on synthetic clustered surrogate labels.

Fixed mode (default) must keep exactly one cluster (1-D) or one grid cell (several latents);
compat mode must reproduce the authors' rules (original-code-spec 5.4), off-by-one included.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rpu_ray.reduction import (
    GAUSSIAN_KL_ACTIVE_THRESHOLD,
    PSEUDO_KL_ACTIVE_THRESHOLD,
    STOP_BELOW_MIN_SIZE,
    STOP_CHOICE_UNAVAILABLE,
    STOP_NO_ACTIVE_LATENT,
    STOP_NO_INTERSECTION,
    STOP_NO_PEAK,
    STOP_REASONS,
    STOP_TOO_FEW_POINTS,
    ReductionConfig,
    active_latents,
    gap_peaks,
    rank_intervals,
    reduce,
)

FIXED = ReductionConfig()
COMPAT = ReductionConfig(compat=True)


def _shuffled(values: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Same points in a random order, so that no result can rely on contiguous positions."""
    perm = np.random.default_rng(seed).permutation(len(groups))
    return values[perm], groups[perm]


def _clusters(centers, stds, sizes, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1-D Gaussian clusters; returns (values, cluster id of every point)."""
    rng = np.random.default_rng(seed)
    values = np.concatenate(
        [rng.normal(c, s, n) for c, s, n in zip(centers, stds, sizes, strict=True)]
    )
    return _shuffled(values, np.repeat(np.arange(len(sizes)), sizes), seed + 1)


def _four_clusters() -> tuple[np.ndarray, np.ndarray]:
    """4 tight clusters (200 points, std 0.01) at 0..3 plus a wide even region [4, 6] (id 4)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 200) for c in range(4)] + [np.linspace(4, 6, 200)])
    return _shuffled(values, np.repeat(np.arange(5), 200), 1)


def _grid(
    nx: int, ny: int, per_cell: int, noise: float = 0.01, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """2-D labels on an nx x ny grid of clusters; returns (labels (N, 2), cell id)."""
    rng = np.random.default_rng(seed)
    cells = np.repeat(np.arange(nx * ny), per_cell)
    labels = np.stack([cells // ny, cells % ny], axis=1) + rng.normal(0, noise, (cells.size, 2))
    return _shuffled(labels, cells, seed + 1)


def _members(values: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.argsort(values, kind="stable")[start:stop]


# ----------------------------------------------------------------------------- gap peaks


def test_gap_peaks_are_the_gaps_between_clusters() -> None:
    values, _ = _four_clusters()
    gp = gap_peaks(values, FIXED)
    n = values.size
    assert (gp.edge, gp.distance) == ((n - 1) // 15, (n - 1) // 50)
    np.testing.assert_array_equal(gp.order, np.argsort(values, kind="stable"))
    np.testing.assert_array_equal(gp.sorted_values, np.sort(values))
    np.testing.assert_allclose(gp.gaps, np.diff(np.sort(values)))
    # The last sorted point of every cluster is followed by the big gap; the even region has none.
    np.testing.assert_array_equal(gp.peaks, [199, 399, 599, 799])
    np.testing.assert_allclose(gp.heights, gp.gaps[gp.peaks])
    assert np.all((gp.heights > 0.9) & (gp.heights < 1.0))
    assert gp.height_threshold < 0.1


def test_gap_peaks_without_clusters() -> None:
    assert gap_peaks(np.arange(1000.0)).peaks.size == 0  # equal gaps: no peak at any height
    assert gap_peaks(np.full(100, 3.0)).peaks.size == 0
    assert gap_peaks(np.array([1.0])).peaks.size == 0  # no gap at all


# ----------------------------------------------------------------------------- ranking


def test_fixed_intervals_are_exactly_the_clusters() -> None:
    values, groups = _four_clusters()
    ranked = rank_intervals(gap_peaks(values, FIXED), FIXED)
    assert sorted((iv.start, iv.stop) for iv in ranked) == [
        (i, i + 200) for i in range(0, 1000, 200)
    ]
    for iv in ranked:
        assert np.unique(groups[_members(values, iv.start, iv.stop)]).size == 1
    # The wide even region (the loose "cluster" above the last peak) ranks last.
    assert (ranked[-1].start, ranked[-1].stop) == (800, 1000)
    assert ranked[-1].right_height == np.inf and ranked[0].score > 10 * ranked[-1].score
    assert [iv.score for iv in ranked] == sorted((iv.score for iv in ranked), reverse=True)
    inner = next(iv for iv in ranked if iv.start == 200)
    gaps = np.diff(np.sort(values))
    assert inner.mean_gap == pytest.approx(np.mean(gaps[200:399]))
    assert inner.score == pytest.approx(min(gaps[199], gaps[399]) / inner.mean_gap)


def test_tight_cluster_ranks_above_loose_and_compat_ranks_by_size() -> None:
    stds = [0.01, 0.002, 0.03, 0.01, 0.01]
    values, groups = _clusters(range(5), stds, [200, 150, 300, 200, 200])

    def ranked_clusters(config: ReductionConfig) -> list[int]:
        ivs = rank_intervals(gap_peaks(values, config), config)
        return [
            int(np.bincount(groups[_members(values, iv.start, iv.stop)]).argmax()) for iv in ivs
        ]

    fixed = ranked_clusters(FIXED)
    assert fixed[0] == 1 and fixed[-1] == 2  # tightest first, loosest last
    # Authors: the boundary peak gap inside the mean makes the score ~ interval size, so the
    # loose 300-point cluster wins; only inner intervals exist with one latent.
    assert ranked_clusters(COMPAT) == [2, 3, 1]


# ----------------------------------------------------------------------------- one latent


def test_fixed_choice_is_exactly_one_cluster() -> None:
    values, groups = _four_clusters()
    ranked = rank_intervals(gap_peaks(values, FIXED), FIXED)
    seen = set()
    for choice, iv in enumerate(ranked):
        result = reduce(values[:, None], choice, FIXED)
        assert result.ok and result.stop_reason is None
        cluster = int(groups[result.indices[0]])
        np.testing.assert_array_equal(result.indices, np.flatnonzero(groups == cluster))
        assert result.indices.dtype == np.int64
        assert result.latents[0].chosen == iv
        assert result.candidate_sizes == (200,) * 5
        seen.add(cluster)
    assert seen == set(range(5))
    assert reduce(values[:, None], 0, FIXED).latents[0].num_peaks == 4


def test_compat_reproduces_the_off_by_one() -> None:
    values, groups = _four_clusters()
    order = np.argsort(values, kind="stable")
    gp = gap_peaks(values, COMPAT)
    ranked = rank_intervals(gp, COMPAT)
    # One latent: only the 3 intervals between peaks, [peak_t, peak_t+1) in sorted positions.
    assert sorted((iv.start, iv.stop) for iv in ranked) == [(199, 399), (399, 599), (599, 799)]
    for choice, iv in enumerate(ranked):
        result = reduce(values[:, None], choice, COMPAT)
        assert result.ok and result.size == 200
        # Authors' order: latent-value order, not ascending.
        np.testing.assert_array_equal(result.indices, order[iv.start : iv.stop])
        cluster = groups[order[iv.stop]]  # the cluster whose last point is at position stop
        assert groups[order[iv.start]] == cluster - 1  # point just left of the gap included
        assert order[iv.stop] not in set(result.indices)  # the cluster's last point excluded
        assert np.sum(groups[result.indices] == cluster) == 199
        # Mean gap includes the left peak gap.
        assert iv.mean_gap == pytest.approx(np.mean(gp.gaps[iv.start : iv.stop]))


def test_choice_beyond_candidates() -> None:
    values, _ = _four_clusters()
    fixed = reduce(values[:, None], 5, FIXED)
    assert fixed.stop_reason == STOP_CHOICE_UNAVAILABLE and fixed.indices is None
    assert len(fixed.candidate_sizes) == 5 and "choice 5" in fixed.message
    # The authors' code raises IndexError here (3 inner intervals).
    assert reduce(values[:, None], 3, COMPAT).stop_reason == STOP_CHOICE_UNAVAILABLE
    assert reduce(values[:, None], 2, COMPAT).ok


def test_single_peak_sides() -> None:
    # Loose lower cluster, tight upper cluster.
    values, groups = _clusters([0, 1], [0.05, 0.002], [300, 200])
    order = np.argsort(values, kind="stable")
    fixed = reduce(values[:, None], 0, FIXED)
    np.testing.assert_array_equal(fixed.indices, np.flatnonzero(groups == 1))
    np.testing.assert_array_equal(
        reduce(values[:, None], 1, FIXED).indices, np.flatnonzero(groups == 0)
    )
    assert reduce(values[:, None], 2, FIXED).stop_reason == STOP_CHOICE_UNAVAILABLE
    # Compat below the root: the side with the smaller mean gap, and the upper side's mean
    # includes the peak gap, so the loose lower side [0, p) wins.
    below = reduce(values[:, None], 0, COMPAT)
    np.testing.assert_array_equal(below.indices, order[:299])
    # Compat at the root: positional (choice 0 = lower side [0, p)), choice > 1 aborts.
    np.testing.assert_array_equal(
        reduce(values[:, None], 0, COMPAT, root=True).indices, order[:299]
    )
    np.testing.assert_array_equal(
        reduce(values[:, None], 1, COMPAT, root=True).indices, order[299:498]
    )
    assert reduce(values[:, None], 2, COMPAT, root=True).stop_reason == STOP_CHOICE_UNAVAILABLE
    # Several latents, one with a single peak: the authors crash at the root for x_peak >= 2.
    labels, _ = _grid(4, 2, 50)
    assert reduce(labels, 2, COMPAT, root=True).stop_reason == STOP_CHOICE_UNAVAILABLE
    assert reduce(labels, 2, COMPAT).ok and reduce(labels, 2, FIXED, root=True).ok


def test_small_tight_outlier_cluster_is_skipped_in_fixed_mode() -> None:
    # 9 points: below size_d_min, but not below the find_peaks distance (N - 1) // 50 = 9.
    values, groups = _clusters([0, 1, 1.5, 2], [0.01, 0.01, 0.0001, 0.01], [150, 150, 9, 150])
    ranked = rank_intervals(gap_peaks(values, FIXED), FIXED)
    assert ranked[0].size == 9  # the tightest interval is too small to continue on
    result = reduce(values[:, None], 0, FIXED)
    assert result.ok and result.size == 150 and np.unique(groups[result.indices]).size == 1
    assert result.candidate_sizes == (150, 150, 150)


def test_peak_side_cutoff_trims_both_ends() -> None:
    values, _ = _four_clusters()
    order = np.argsort(values, kind="stable")
    config = ReductionConfig(peak_side_cutoff=0.1)
    result = reduce(values[:, None], 0, config)
    chosen = rank_intervals(gap_peaks(values, config), config)[0]
    np.testing.assert_array_equal(
        result.indices, np.sort(order[chosen.start + 20 : chosen.stop - 20])
    )
    assert result.latents[0].chosen.size == 160
    assert result.latents[0].chosen.low == values[order[chosen.start + 20]]
    compat = reduce(values[:, None], 0, ReductionConfig(compat=True, peak_side_cutoff=0.1))
    assert compat.size == 160


def test_dsprites_like_position_classes() -> None:
    # posX: 32 classes on [0, 1], 64 images each, encoder-mean noise a tenth of the spacing.
    rng = np.random.default_rng(3)
    classes = np.repeat(np.arange(32), 64)
    values = classes / 31 + rng.normal(0, 0.1 / 31, classes.size)
    values, classes = _shuffled(values, classes, 4)
    result = reduce(values[:, None], 0, FIXED)
    assert result.size == values.size // 32
    assert np.unique(classes[result.indices]).size == 1
    compat = reduce(values[:, None], 0, COMPAT)
    assert compat.size == 64 and np.bincount(classes[compat.indices]).max() == 63


# ----------------------------------------------------------------------------- several latents


def test_grid_intersection_is_one_cell() -> None:
    labels, cells = _grid(4, 4, 50)
    first = reduce(labels, 0, FIXED)
    assert first.ok and len(first.candidate_sizes) == 16
    assert [lat.num_candidates for lat in first.latents] == [4, 4]
    chosen_cells = []
    for choice in range(16):
        result = reduce(labels, choice, FIXED)
        cell = int(cells[result.indices[0]])
        np.testing.assert_array_equal(result.indices, np.flatnonzero(cells == cell))
        chosen_cells.append(cell)
    assert sorted(chosen_cells) == list(range(16))
    assert reduce(labels, 16, FIXED).stop_reason == STOP_CHOICE_UNAVAILABLE
    # The first cell is the intersection of every latent's best interval (leximin).
    for j, lat in enumerate(first.latents):
        config_ranked = rank_intervals(gap_peaks(labels[:, j], FIXED), FIXED, num_latents=2)
        assert lat.chosen == config_ranked[0]
        assert lat.chosen.low <= labels[first.indices, j].min()
        assert lat.chosen.high >= labels[first.indices, j].max()


def test_compat_grid_uses_edge_intervals_and_median_rule() -> None:
    # Unequal cells so that the median rule is visible.
    rng = np.random.default_rng(5)
    sizes = rng.integers(30, 60, 16)
    cells = np.repeat(np.arange(16), sizes)
    labels = np.stack([cells // 4, cells % 4], axis=1) + rng.normal(0, 0.01, (cells.size, 2))
    labels, cells = _shuffled(labels, cells, 6)
    result = reduce(labels, 0, COMPAT)
    assert result.ok
    # 3 peaks and 2 latents: the outer intervals are added (4 per latent, pseudo height 1.0).
    for j, lat in enumerate(result.latents):
        ranked = rank_intervals(gap_peaks(labels[:, j], COMPAT), COMPAT, num_latents=2)
        assert lat.num_peaks == 3 and lat.num_intervals == 4 and lat.num_candidates == 4
        assert {iv.start for iv in ranked} >= {0} and max(
            iv.stop for iv in ranked
        ) == cells.size - 2
        assert 1.0 in {iv.left_height for iv in ranked} | {iv.right_height for iv in ranked}
    distance = np.abs(np.array(result.candidate_sizes) - np.median(result.candidate_sizes))
    assert np.all(np.diff(distance) >= 0)  # closest to the median size first
    assert np.bincount(cells[result.indices]).max() >= result.size - 2  # one cell, off by one
    np.testing.assert_array_equal(result.indices, np.sort(result.indices))


def test_top_k_limits_candidates_per_latent() -> None:
    labels, _ = _grid(8, 2, 40)
    result = reduce(labels, 0, FIXED)
    assert [lat.num_intervals for lat in result.latents] == [8, 2]
    assert [lat.num_candidates for lat in result.latents] == [5, 2]
    assert len(result.candidate_sizes) == 10
    narrow = reduce(labels, 0, ReductionConfig(top_k=2))
    assert len(narrow.candidate_sizes) == 4
    assert reduce(labels, 4, ReductionConfig(top_k=2)).stop_reason == STOP_CHOICE_UNAVAILABLE
    # Compat: 7 peaks -> 6 inner intervals, top 5; 1 peak -> both sides.
    compat = reduce(labels, 0, COMPAT)
    assert [lat.num_candidates for lat in compat.latents] == [5, 2]
    assert len(compat.candidate_sizes) == 10


def test_disjoint_best_intervals_give_no_intersection() -> None:
    # Three groups; latent 0 is tight on group 0, latent 1 on group 2 (placed lowest there).
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1, 2], 300)
    latent0 = np.array([0, 1, 2])[groups] + np.array([0.001, 0.05, 0.05])[groups] * rng.normal(
        size=900
    )
    latent1 = np.array([2, 1, 0])[groups] + np.array([0.05, 0.05, 0.001])[groups] * rng.normal(
        size=900
    )
    labels = np.stack([latent0, latent1], axis=1)
    for compat in (False, True):
        top1 = reduce(labels, 0, ReductionConfig(top_k=1, compat=compat))
        assert top1.stop_reason == STOP_NO_INTERSECTION and top1.candidate_sizes == ()
        assert "intersection" in top1.message
    full = reduce(labels, 0, FIXED)
    assert full.ok and full.candidate_sizes == (300, 300, 300)
    np.testing.assert_array_equal(full.indices, np.flatnonzero(groups == 0))


# ----------------------------------------------------------------------------- stop reasons


def test_no_active_latent() -> None:
    kl = np.array([0.3, 0.9, 0.05])
    idx = active_latents(kl, FIXED.active_threshold("gaussian"))
    assert idx.size == 0 and idx.dtype == np.int64
    means = np.random.default_rng(0).normal(size=(500, 3))
    for config in (FIXED, COMPAT):
        result = reduce(means[:, idx], 0, config)
        assert result.stop_reason == STOP_NO_ACTIVE_LATENT and result.indices is None


def test_active_latents_threshold_is_strict() -> None:
    kl = np.array([1.0, 1.5, 0.2, 3.0])
    np.testing.assert_array_equal(active_latents(kl, 1.0), [1, 3])
    assert ReductionConfig.authors().active_kl_threshold == 1.0
    assert ReductionConfig.authors().compat


def test_active_threshold_follows_the_kind_of_kl_unless_set() -> None:
    default = ReductionConfig()
    assert default.active_threshold("gaussian") == GAUSSIAN_KL_ACTIVE_THRESHOLD
    assert default.active_threshold("authors") == PSEUDO_KL_ACTIVE_THRESHOLD == 1.0
    for kl in ("gaussian", "authors"):
        assert ReductionConfig(active_kl_threshold=0.3).active_threshold(kl) == 0.3


def test_too_few_points() -> None:
    # Two clusters of 20: the authors' find_peaks raises (distance 0); fixed mode reduces.
    values, groups = _clusters([0, 1], [0.01, 0.01], [20, 20])
    assert reduce(values[:, None], 0, COMPAT).stop_reason == STOP_TOO_FEW_POINTS
    fixed = reduce(values[:, None], 0, FIXED)
    assert fixed.ok and fixed.size == 20 and np.unique(groups[fixed.indices]).size == 1
    # 51 points is the smallest set the authors' code can reduce.
    values, _ = _clusters([0, 1], [0.01, 0.001], [25, 26])
    assert reduce(values[:, None], 0, COMPAT).ok
    assert reduce(values[:50, None], 0, COMPAT).stop_reason == STOP_TOO_FEW_POINTS
    # Fixed mode: no strict subset of <= size_d_min points can be kept.
    assert reduce(values[:10, None], 0, FIXED).stop_reason == STOP_TOO_FEW_POINTS
    assert reduce(np.zeros((0, 1)), 0, FIXED).stop_reason == STOP_TOO_FEW_POINTS


def test_no_peak() -> None:
    even = np.arange(1000.0)[:, None]
    for config in (FIXED, COMPAT):
        result = reduce(even, 0, config)
        assert result.stop_reason == STOP_NO_PEAK and result.latents[0].num_peaks == 0
    # One clustered latent is not enough: every active latent needs a peak.
    values, _ = _four_clusters()
    mixed = reduce(np.stack([values, np.linspace(0, 1, values.size)], axis=1), 0, FIXED)
    assert mixed.stop_reason == STOP_NO_PEAK and "[1]" in mixed.message
    assert [lat.num_peaks for lat in mixed.latents] == [4, 0]


def test_below_min_size() -> None:
    # One latent: every cluster (200 points) is below size_d_min = 300. (With the default 10,
    # clusters that small cannot be told apart: more than ~1/16 of the gaps being large
    # inflates sd above the peaks, and the distance rule merges clusters below (N-1) // 50.)
    values, _ = _four_clusters()
    for compat in (False, True):
        result = reduce(values[:, None], 0, ReductionConfig(size_d_min=300, compat=compat))
        assert result.stop_reason == STOP_BELOW_MIN_SIZE and result.indices is None
        assert "300" in result.message
    # Several latents: intersections of 8 points pass the > 5 rule but not size_d_min.
    labels, _ = _grid(4, 4, 8)
    for config in (FIXED, COMPAT):
        result = reduce(labels, 0, config)
        assert result.stop_reason == STOP_BELOW_MIN_SIZE, config.compat


def test_every_stop_reason_is_listed() -> None:
    reasons = {STOP_NO_ACTIVE_LATENT, STOP_TOO_FEW_POINTS, STOP_NO_PEAK, STOP_NO_INTERSECTION,
               STOP_CHOICE_UNAVAILABLE, STOP_BELOW_MIN_SIZE}
    assert len(reasons) == 6 and set(STOP_REASONS) == reasons and len(STOP_REASONS) == 6


# ----------------------------------------------------------------------------- validation


def test_malformed_input_raises() -> None:
    values, _ = _four_clusters()
    with pytest.raises(ValueError, match="2-D"):
        reduce(values, 0, FIXED)
    with pytest.raises(ValueError, match="2-D"):
        reduce(values[:, None, None], 0, FIXED)
    bad = values[:, None].copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        reduce(bad, 0, FIXED)
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        reduce(bad, 0, COMPAT)
    with pytest.raises(ValueError, match="choice"):
        reduce(values[:, None], -1, FIXED)
    with pytest.raises(TypeError):
        reduce(values[:, None], 1.5, FIXED)
    with pytest.raises(ValueError):
        gap_peaks(values[:, None])
    with pytest.raises(ValueError):
        active_latents(np.ones((2, 3)), 1.0)
    with pytest.raises(ValueError):
        active_latents(np.array([np.nan, 2.0]), 1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"peak_side_cutoff": 0.5},
        {"peak_side_cutoff": -0.1},
        {"top_k": 0},
        {"tail_divisor": 2},
        {"distance_divisor": 0},
        {"size_d_min": 0},
        {"min_intersection_size": 0},
        {"outlier_sds": 0.0},
        {"active_kl_threshold": float("nan")},
    ],
)
def test_invalid_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ReductionConfig(**kwargs)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("config", [FIXED, COMPAT], ids=["fixed", "compat"])
def test_deterministic_and_order_independent(config: ReductionConfig) -> None:
    labels, _ = _grid(4, 4, 50)
    first, again = reduce(labels, 3, config), reduce(labels, 3, config)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert first.as_dict() == again.as_dict()
    # Reordering the data set selects the same points.
    perm = np.random.default_rng(9).permutation(len(labels))
    permuted = reduce(labels[perm], 3, config)
    np.testing.assert_array_equal(np.sort(perm[permuted.indices]), np.sort(first.indices))


def test_as_dict_is_json_ready() -> None:
    values, _ = _four_clusters()
    summary = reduce(values[:, None], 1, FIXED).as_dict()
    decoded = json.loads(json.dumps(summary))
    assert decoded["size"] == 200 and decoded["stop_reason"] is None
    assert decoded["latents"][0]["chosen"]["stop"] - decoded["latents"][0]["chosen"]["start"] == 200
    # The outer clusters are bounded by the ends of the data (infinite heights): strict JSON.
    for choice in range(4):
        outer = reduce(values[:, None], choice, FIXED).as_dict()
        json.dumps(outer, allow_nan=False)
    stopped = reduce(np.arange(100.0)[:, None], 0, FIXED).as_dict()
    assert stopped["stop_reason"] == STOP_NO_PEAK and stopped["size"] == 0
