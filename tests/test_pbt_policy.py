"""The pure PBT policy (rpu_ray.pbt) on hand-made score tables: who clones whom, perturbation
arithmetic, rounding, caps and bounds, the stop rules, RNG determinism and the decision log."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rpu_ray.pbt import (
    EXPLOIT_EVENT,
    Decision,
    PBTPolicy,
    best_score,
    clone_seed,
    decisions_frame,
    exploit_and_explore,
    generation_rng,
    initial_hyperparameters,
    is_converged,
    perturb,
    quantile_size,
    rank,
    select,
    stop_reason,
    survivors_after_first_generation,
)

POLICY = PBTPolicy()

# Ten members, ranked m1 m6 | m3 m8 m4 m7 m0 m5 | m2 m9 (top and bottom 2 at q = 0.2).
SCORES = {
    "m0": 0.30, "m1": 0.90, "m2": 0.10, "m3": 0.70, "m4": 0.50,
    "m5": 0.20, "m6": 0.80, "m7": 0.40, "m8": 0.60, "m9": 0.05,
}  # fmt: skip
HPARAMS = {
    m: {"lr": 1e-3 * (i + 1), "batch_size": 8 * (i + 1), "beta": i + 1}
    for i, m in enumerate(SCORES)
}


def _population(n: int, seed: int) -> dict[str, float]:
    """n members with distinct random scores."""
    values = np.random.default_rng(seed).permutation(n) / n
    return {f"t{i:02d}": float(v) for i, v in enumerate(values)}


def _only(factor: float, **overrides: object) -> PBTPolicy:
    """A policy whose explore always draws `factor`."""
    return PBTPolicy(perturb_factors=(factor,), **overrides)  # type: ignore[arg-type]


# --- defaults and initial hyperparameters -----------------------------------------------------


def test_init_grids_are_the_authors() -> None:
    # Exactly the authors' expressions in pbt4vae/utils.py (spec 2.4).
    assert POLICY.batch_size_grid == tuple(np.logspace(3, 10, base=2, num=8, dtype=int).tolist())
    # The authors' expression, to the ulp (numpy 2.4 puts its first point 1 ulp below 1e-5).
    assert POLICY.lr_grid == pytest.approx(np.logspace(-5, 0, num=30, base=10), rel=1e-15)
    assert POLICY.lr_grid[0] == 1e-5 and POLICY.lr_grid[-1] == 1.0
    assert POLICY.lr_grid[6] == pytest.approx(1.083e-4, rel=1e-3)
    betas = [int(1.5**t) for t in np.linspace(1, 15, 24)]
    assert betas[:2] == [1, 1]  # the duplicate the authors drop
    assert POLICY.beta_grid == tuple(betas[1:])
    assert len(POLICY.beta_grid) == 23 and POLICY.beta_grid[-1] == 437
    assert POLICY.beta_grid == tuple(np.logspace(1, 15, base=1.5, num=24, dtype=int)[1:].tolist())


def test_authors_constants_are_the_defaults() -> None:
    assert POLICY.quantile_fraction == 0.2
    assert POLICY.perturb_factors == (2.0, 1.2, 0.8, 0.5)
    assert POLICY.batch_size_max == 1024
    assert (POLICY.convergence_threshold, POLICY.convergence_patience) == (0.005, 6)
    assert POLICY.min_score == 0.1
    assert POLICY.big_init_population_factor == 1


def test_initial_hyperparameters_draw_beta_batch_size_lr_in_that_order() -> None:
    hparams = initial_hyperparameters(POLICY, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    beta = POLICY.beta_grid[rng.integers(23)]
    batch_size = POLICY.batch_size_grid[rng.integers(8)]
    lr = POLICY.lr_grid[rng.integers(30)]
    assert hparams == {"lr": lr, "batch_size": batch_size, "beta": beta}
    assert type(hparams["lr"]) is float
    assert type(hparams["batch_size"]) is int and type(hparams["beta"]) is int


def test_initial_hyperparameters_cover_the_grids() -> None:
    rng = np.random.default_rng(0)
    draws = [initial_hyperparameters(POLICY, rng) for _ in range(2000)]
    assert {d["lr"] for d in draws} == set(POLICY.lr_grid)
    assert {d["batch_size"] for d in draws} == set(POLICY.batch_size_grid)
    assert {d["beta"] for d in draws} == set(POLICY.beta_grid)


# --- ranking and selection --------------------------------------------------------------------


def test_rank_best_first_with_non_finite_last_and_ties_stable() -> None:
    scores = {
        "a": 0.5,
        "nan": math.nan,
        "b": 0.7,
        "none": None,
        "c": 0.5,
        "inf": math.inf,
        "d": 0.7,
        "ninf": -math.inf,
        "e": -3.0,
    }
    assert rank(scores) == ["b", "d", "a", "c", "e", "nan", "none", "inf", "ninf"]
    assert rank({"x": 0.1, "y": 0.1, "z": 0.1}) == ["x", "y", "z"]
    assert rank({"z": 0.1, "y": 0.1, "x": 0.1}) == ["z", "y", "x"]
    assert rank({}) == []


def test_best_score_ignores_non_finite() -> None:
    assert best_score({"a": 0.2, "b": math.nan, "c": 0.4, "d": None}) == 0.4
    assert best_score({"a": math.nan, "b": None}) == -math.inf
    assert best_score({}) == -math.inf


@pytest.mark.parametrize(
    ("n", "expected"), [(56, 12), (28, 6), (10, 2), (5, 1), (4, 1), (3, 1), (2, 1), (1, 0), (0, 0)]
)
def test_quantile_size(n: int, expected: int) -> None:
    assert quantile_size(n, POLICY) == expected


def test_quantile_size_capped_at_half_as_ray() -> None:
    half = PBTPolicy(quantile_fraction=0.5)
    assert [quantile_size(n, half) for n in (2, 3, 4, 5)] == [1, 1, 2, 2]


def test_select_pinned_for_a_fixed_rng() -> None:
    # Top m1, m6; bottom m2 (0.10), m9 (0.05); the middle six are untouched.
    assert select(SCORES, POLICY, np.random.default_rng(1)) == {"m2": "m1", "m9": "m6"}


@pytest.mark.parametrize("n", [2, 3, 4, 10, 28, 56])
def test_select_donors_from_top_losers_from_bottom(n: int) -> None:
    cutoff = quantile_size(n, POLICY)
    for seed in range(20):
        scores = _population(n, seed)
        ranking = rank(scores)
        chosen = select(scores, POLICY, np.random.default_rng(seed))
        assert list(chosen) == ranking[n - cutoff :]  # exactly the bottom, in rank order
        assert set(chosen.values()) <= set(ranking[:cutoff])


def test_select_draws_uniformly_with_replacement() -> None:
    scores = _population(56, 0)
    top = set(rank(scores)[:12])
    counts: collections.Counter[str] = collections.Counter()
    repeated = False
    for seed in range(200):
        donors = list(select(scores, POLICY, np.random.default_rng(seed)).values())
        counts.update(donors)
        repeated |= len(set(donors)) < len(donors)
    assert set(counts) == top
    assert repeated  # with replacement: 12 picks from 12 donors are almost never all distinct
    # 2400 picks over 12 donors: 200 expected each, sd about 13.
    assert all(140 < c < 260 for c in counts.values())


def test_select_small_populations() -> None:
    rng = np.random.default_rng(0)
    assert select({}, POLICY, rng) == {}
    assert select({"a": 0.3}, POLICY, rng) == {}
    assert select({"a": math.nan}, POLICY, rng) == {}
    assert select({"a": 0.3, "b": 0.5}, POLICY, rng) == {"a": "b"}


def test_nan_members_are_always_replaced() -> None:
    # One diverged member: it is in the bottom whatever the other scores.
    scores = {**SCORES, "m4": math.nan}
    chosen = select(scores, POLICY, np.random.default_rng(0))
    assert set(chosen) == {"m4", "m9"}  # m4 ranks last, m9 is now second to last
    # More diverged members than the bottom quantile (2): all three are replaced, and no one
    # else, since they fill the bottom; the finite m2 and m9 now rank in the middle.
    scores = {**SCORES, "m3": math.nan, "m4": None, "m8": math.inf}
    chosen = select(scores, POLICY, np.random.default_rng(0))
    assert list(chosen) == ["m3", "m4", "m8"]
    assert set(chosen.values()) <= {"m1", "m6"}


def test_diverged_members_in_the_top_are_not_donors() -> None:
    # Nine of ten diverged: the top quantile (2) holds m0 and a NaN member; only m0 donates,
    # and every diverged member, the NaN one in the top included, clones it.
    scores = {f"m{i}": math.nan for i in range(10)} | {"m0": 0.4}
    chosen = select(scores, POLICY, np.random.default_rng(0))
    assert set(chosen) == {f"m{i}" for i in range(1, 10)}
    assert set(chosen.values()) == {"m0"}


# --- explore ----------------------------------------------------------------------------------

# (factor, hyperparameter, value before, value after) with the default bounds.
EXPLORE_CASES = [
    (2.0, "lr", 1e-3, 2e-3), (1.2, "lr", 1e-3, 1.2e-3), (0.8, "lr", 1e-3, 8e-4),
    (0.5, "lr", 1e-3, 5e-4),
    (2.0, "lr", 0.9, 1.0), (0.5, "lr", 1.5e-5, 1e-5),  # clipped at both bounds
    (2.0, "batch_size", 64, 128), (1.2, "batch_size", 64, 77), (0.8, "batch_size", 64, 52),
    (0.5, "batch_size", 64, 32), (0.5, "batch_size", 9, 5),  # ceil(76.8), ceil(51.2), ceil(4.5)
    (1.2, "batch_size", 1000, 1024), (2.0, "batch_size", 1024, 1024),  # capped at 1024
    (0.5, "batch_size", 3, 2), (0.5, "batch_size", 2, 2),  # ceil(1.5) = 2; ceil(1) = 1 -> min 2
    (0.8, "batch_size", 2, 2),
    (2.0, "beta", 10, 20), (1.2, "beta", 10, 12), (0.8, "beta", 10, 8), (0.5, "beta", 10, 5),
    (1.2, "beta", 5, 6), (0.8, "beta", 3, 3), (0.5, "beta", 3, 2),  # ceil(6.0), ceil(2.4)...
    (0.8, "beta", 1, 1), (0.5, "beta", 1, 1),  # beta never drops below 1
    (2.0, "beta", 437, 874), (2.0, "beta", 874, 1000),  # capped at 1000
]  # fmt: skip


@pytest.mark.parametrize(("factor", "name", "before", "after"), EXPLORE_CASES)
def test_perturb_arithmetic(factor: float, name: str, before: float, after: float) -> None:
    hparams = {"lr": 1e-3, "batch_size": 64, "beta": 10, name: before}
    new, factors = perturb(hparams, _only(factor), np.random.default_rng(0))
    assert new[name] == pytest.approx(after, rel=1e-12)
    assert factors == {"lr": factor, "batch_size": factor, "beta": factor}
    if name != "lr":
        assert type(new[name]) is int


def test_perturb_custom_bounds() -> None:
    policy = _only(0.5, batch_size_min=4, beta_min=2, lr_min=1e-4, lr_grid=(1e-3,), beta_grid=(4,))
    new, _ = perturb({"lr": 1.5e-4, "batch_size": 5, "beta": 3}, policy, np.random.default_rng(0))
    assert new == {"lr": 1e-4, "batch_size": 4, "beta": 2}
    policy = _only(
        2.0,
        batch_size_max=100,
        beta_max=50,
        lr_max=0.01,
        lr_grid=(1e-3,),
        batch_size_grid=(64,),
        beta_grid=(4,),
    )
    new, _ = perturb({"lr": 0.008, "batch_size": 64, "beta": 30}, policy, np.random.default_rng(0))
    assert new == {"lr": 0.01, "batch_size": 100, "beta": 50}


def test_perturb_one_independent_draw_per_hyperparameter() -> None:
    rng = np.random.default_rng(0)
    draws = [
        perturb({"lr": 1e-3, "batch_size": 64, "beta": 10}, POLICY, rng)[1] for _ in range(4000)
    ]
    for name in ("lr", "batch_size", "beta"):
        counts = collections.Counter(d[name] for d in draws)
        assert set(counts) == set(POLICY.perturb_factors)
        assert all(850 < c < 1150 for c in counts.values())  # 1000 expected, sd about 27
    # Independent: two hyperparameters share their factor about a quarter of the time.
    for a, b in (("lr", "batch_size"), ("lr", "beta"), ("batch_size", "beta")):
        same = sum(d[a] == d[b] for d in draws) / len(draws)
        assert 0.22 < same < 0.28


def test_perturb_without_beta_and_ignoring_other_keys() -> None:
    config = {"lr": 1e-3, "batch_size": 64, "num_models": 5, "loss": "vae"}
    new, factors = perturb(config, _only(2.0), np.random.default_rng(0))
    assert new == {"lr": 2e-3, "batch_size": 128}
    assert factors == {"lr": 2.0, "batch_size": 2.0}
    with pytest.raises(ValueError, match=r"\['batch_size'\] missing"):
        perturb({"lr": 1e-3, "beta": 4}, POLICY, np.random.default_rng(0))


# --- exploit and explore ----------------------------------------------------------------------


def test_exploit_and_explore_decisions() -> None:
    decisions = exploit_and_explore(
        SCORES, HPARAMS, POLICY, np.random.default_rng(1), generation=4, seed=11
    )
    assert [(d.member, d.donor) for d in decisions] == [("m2", "m1"), ("m9", "m6")]
    rng = np.random.default_rng(1)
    select(SCORES, POLICY, rng)  # the donors come first from the same stream, then explore
    for d in decisions:
        new, factors = perturb(HPARAMS[d.donor], POLICY, rng)
        assert (d.new_hparams, d.factors) == (new, factors)
        assert d.generation == 4
        assert d.member_score == SCORES[d.member] and d.donor_score == SCORES[d.donor]
        assert d.old_hparams == HPARAMS[d.member] and d.donor_hparams == HPARAMS[d.donor]
        assert d.seed == clone_seed(11, 4, d.member)


def test_exploit_and_explore_logs_only_pbt_hyperparameters_as_plain_numbers() -> None:
    configs = {
        m: {**h, "beta": np.int64(h["beta"]), "lr": np.float64(h["lr"]), "loss": "x"}
        for m, h in HPARAMS.items()
    }
    scores = {**SCORES, "m9": math.nan}
    decisions = exploit_and_explore(
        scores, configs, POLICY, np.random.default_rng(0), generation=0, seed=0
    )
    assert decisions[-1].member == "m9" and decisions[-1].member_score is None
    for d in decisions:
        for hparams in (d.old_hparams, d.donor_hparams, d.new_hparams):
            assert set(hparams) == {"lr", "batch_size", "beta"}
            assert all(type(v) in (int, float) for v in hparams.values())
        json.dumps(d.to_dict(), allow_nan=False)


def test_exploit_and_explore_rejects_mismatched_members() -> None:
    with pytest.raises(ValueError, match="different members"):
        exploit_and_explore(
            SCORES, {"m0": HPARAMS["m0"]}, POLICY, np.random.default_rng(0), generation=0, seed=0
        )


def test_survivors_after_first_generation() -> None:
    scores = _population(56, 3)
    two = PBTPolicy(big_init_population_factor=2)
    assert survivors_after_first_generation(scores, two) == rank(scores)[:28]
    assert survivors_after_first_generation(SCORES, POLICY) == rank(SCORES)
    assert survivors_after_first_generation(SCORES, PBTPolicy(big_init_population_factor=3)) == [
        "m1",
        "m6",
        "m3",
    ]
    # At least two members stay, and diverged ones go first.
    scores = {"a": 0.1, "b": math.nan, "c": 0.3, "d": 0.2, "e": 0.0, "f": None}
    assert survivors_after_first_generation(scores, PBTPolicy(big_init_population_factor=5)) == [
        "c",
        "d",
    ]
    assert survivors_after_first_generation({"a": 0.1}, two) == ["a"]


# --- stop rules -------------------------------------------------------------------------------


def test_convergence_needs_seven_flat_generations() -> None:
    assert not is_converged([0.5] * 6, POLICY)
    assert is_converged([0.5] * 7, POLICY)
    assert not is_converged([], POLICY)


def test_convergence_threshold_is_strict_and_per_transition() -> None:
    # Steps of 0.004 are each below 0.005, so a slow drift still converges (as the authors).
    assert is_converged([0.5 + 0.004 * t for t in range(7)], POLICY)
    # A change of exactly the threshold (exact in binary) is not "less than" it.
    assert not is_converged(
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5 + 2**-7], PBTPolicy(convergence_threshold=2**-7)
    )
    assert not is_converged([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.49], POLICY)


def test_a_jump_resets_convergence() -> None:
    history = [0.1, 0.2, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]  # jump into 0.5 at generation 2
    assert not is_converged(history, POLICY)
    assert is_converged([*history, 0.5], POLICY)
    assert not is_converged([*history, 0.5, 0.6], POLICY)
    assert not is_converged([0.5] * 6 + [math.nan], POLICY)
    assert not is_converged([math.nan] * 8, POLICY)


def test_convergence_patience_and_disable() -> None:
    assert is_converged([0.1, 0.3, 0.3, 0.3], PBTPolicy(convergence_patience=2))
    assert not is_converged([0.1, 0.3, 0.3], PBTPolicy(convergence_patience=2))
    assert not is_converged([0.5] * 50, PBTPolicy(convergence_patience=None))


def test_stop_reasons_in_the_authors_order() -> None:
    assert stop_reason([], POLICY) is None
    assert stop_reason([0.5] * 6, POLICY) is None
    assert stop_reason([0.5] * 7, POLICY) == "converged"
    assert stop_reason([0.5, 0.09], POLICY) == "below_min_score"
    assert stop_reason([0.5, 0.1], POLICY) is None  # strictly below
    assert stop_reason([0.5, math.nan], POLICY) == "below_min_score"
    assert stop_reason([0.5, None], POLICY) == "below_min_score"
    # The end condition comes before convergence, convergence before the cap.
    assert stop_reason([0.05] * 7, POLICY) == "below_min_score"
    assert stop_reason([0.5] * 7, PBTPolicy(max_generations=7)) == "converged"
    rising = [0.2 + 0.01 * t for t in range(30)]
    assert stop_reason(rising[:29], POLICY) is None
    assert stop_reason(rising, POLICY) == "max_generations"


def test_stop_reasons_disabled() -> None:
    supervised = PBTPolicy(convergence_patience=None, min_score=None, max_generations=17)
    assert stop_reason([0.0] * 16, supervised) is None
    assert stop_reason([0.0] * 17, supervised) == "max_generations"
    unbounded = PBTPolicy(max_generations=None)
    assert stop_reason([0.2 + 0.01 * t for t in range(80)], unbounded) is None


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_decisions() -> None:
    scores = _population(56, 1)
    hparams = {
        m: initial_hyperparameters(POLICY, np.random.default_rng(i)) for i, m in enumerate(scores)
    }

    def run(seed: int) -> list[Decision]:
        return exploit_and_explore(
            scores, hparams, POLICY, generation_rng(seed, 2), generation=2, seed=seed
        )

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_generation_rng_is_a_function_of_seed_and_generation() -> None:
    def draws(seed: int | tuple[int, ...], generation: int) -> list[int]:
        return generation_rng(seed, generation).integers(1 << 30, size=4).tolist()

    assert draws(0, 0) == draws(0, 0)
    assert draws((0, 1, 2), 5) == draws((0, 1, 2), 5)
    assert len({tuple(draws(s, g)) for s in (0, 1, (0, 1)) for g in range(5)}) == 15


def test_clone_seed() -> None:
    seed = clone_seed(7, 3, "m2")
    assert seed == clone_seed(7, 3, "m2") == 6159015850612269937  # pinned
    assert 0 <= seed < 2**63
    variants = {
        clone_seed(7, 3, "m2"),
        clone_seed(8, 3, "m2"),
        clone_seed(7, 4, "m2"),
        clone_seed(7, 3, "m3"),
        clone_seed((7, 1), 3, "m2"),
        clone_seed(7, 3, "m"),
    }
    assert len(variants) == 6
    # A clone's seed does not depend on its donor or on the order of the draws.
    one = exploit_and_explore(
        SCORES, HPARAMS, POLICY, np.random.default_rng(0), generation=3, seed=7
    )
    two = exploit_and_explore(
        SCORES, HPARAMS, POLICY, np.random.default_rng(9), generation=3, seed=7
    )
    assert [d.seed for d in one] == [d.seed for d in two]


# --- decision log -----------------------------------------------------------------------------


def test_decision_log_round_trip_through_jsonl(tmp_path: Path) -> None:
    scores = {**SCORES, "m9": math.nan}
    decisions = [
        *exploit_and_explore(
            scores, HPARAMS, POLICY, np.random.default_rng(0), generation=0, seed=5
        ),
        *exploit_and_explore(
            SCORES, HPARAMS, POLICY, np.random.default_rng(1), generation=1, seed=5
        ),
    ]
    log = tmp_path / "events.jsonl"
    with log.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"event": "generation", "generation": 0, "best": 0.9}) + "\n")
        for d in decisions:
            f.write(json.dumps(d.to_dict(), allow_nan=False) + "\n")
        f.write("\n")

    frame = decisions_frame(log)
    assert len(frame) == len(decisions) == 4
    assert (frame["event"] == EXPLOIT_EVENT).all()
    assert frame["member"].tolist() == [d.member for d in decisions]
    assert frame["donor"].tolist() == [d.donor for d in decisions]
    assert frame["generation"].tolist() == [0, 0, 1, 1]
    assert frame["seed"].dtype == np.int64
    assert math.isnan(frame["member_score"].iloc[1])  # the diverged m9: null in JSON
    for field in ("old_hparams", "donor_hparams", "new_hparams", "factors"):
        for name in ("lr", "batch_size", "beta"):
            column = frame[f"{field}.{name}"].tolist()
            assert column == [getattr(d, field)[name] for d in decisions]
    # The same frame from the records, as dicts or as Decisions.
    pd.testing.assert_frame_equal(decisions_frame(d.to_dict() for d in decisions), frame)
    pd.testing.assert_frame_equal(decisions_frame(decisions), frame)


def test_decision_to_dict_is_all_fields_plus_event() -> None:
    (decision, *_) = exploit_and_explore(
        SCORES, HPARAMS, POLICY, np.random.default_rng(0), generation=2, seed=0
    )
    record = decision.to_dict()
    assert record.pop("event") == EXPLOIT_EVENT
    assert record == {f.name: getattr(decision, f.name) for f in dataclasses.fields(Decision)}


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quantile_fraction": 0.0}, "quantile_fraction"),
        ({"quantile_fraction": 0.6}, "quantile_fraction"),
        ({"quantile_fraction": math.nan}, "quantile_fraction"),
        ({"perturb_factors": ()}, "perturb_factors must not be empty"),
        ({"perturb_factors": (2.0, -0.5)}, "perturb_factors must be finite and > 0"),
        ({"perturb_factors": (2.0, math.inf)}, "perturb_factors must be finite and > 0"),
        ({"lr_min": 0.0}, "lr bounds must be finite and > 0"),
        ({"lr_max": -1.0}, "lr bounds must be finite and > 0"),
        ({"lr_min": 0.1, "lr_max": 0.01}, "lr_min 0.1 > lr_max 0.01"),
        ({"batch_size_min": 1}, "batch_size_min must be >= 2"),
        ({"batch_size_min": 64, "batch_size_max": 32}, "batch_size_min 64 > batch_size_max 32"),
        ({"batch_size_max": 1024.0}, "batch_size bounds must be integers"),
        ({"beta_min": 0}, "beta_min must be >= 1"),
        ({"beta_min": 20, "beta_max": 10}, "beta_min 20 > beta_max 10"),
        ({"beta_max": 100}, r"beta_grid values \[127, 163, 208, 267, 342, 437\] are outside"),
        ({"lr_min": 1e-4}, "lr_grid values .* are outside the bounds"),
        ({"batch_size_max": 512}, r"batch_size_grid values \[1024\] are outside"),
        ({"batch_size_grid": ()}, "batch_size_grid must not be empty"),
        ({"beta_grid": (1, 2.5)}, "beta_grid must hold integers"),
        ({"convergence_threshold": 0.0}, "convergence_threshold"),
        ({"convergence_patience": 0}, "convergence_patience must be an integer >= 1 or None"),
        ({"max_generations": 2.5}, "max_generations must be an integer >= 1 or None"),
        ({"min_score": math.nan}, "min_score must be finite or None"),
        ({"big_init_population_factor": 0}, "big_init_population_factor must be an integer"),
    ],
)
def test_validate_rejects(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PBTPolicy(**overrides)  # type: ignore[arg-type]


def test_policy_accepts_lists_and_is_frozen() -> None:
    policy = PBTPolicy(perturb_factors=[2, 0.5], batch_size_grid=[8, 16])  # type: ignore[arg-type]
    assert policy.perturb_factors == (2, 0.5) and policy.batch_size_grid == (8, 16)
    hash(policy)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.quantile_fraction = 0.3  # type: ignore[misc]
    policy.validate()
