"""Pure PBT policy of rPU-VAE: initial hyperparameters, ranking, truncation selection, explore
with bounds, the metaEpoch stop rules and the log of exploit/explore decisions.

Everything here is a function of plain dicts and sequences plus a `numpy.random.Generator` that
the caller passes in; nothing imports Ray or torch (DESIGN.md, "Policy is pure"). The Ray Tune
scheduler (`schedulers/`, synchronous PBT) and the in-process executor call the same functions,
so both make the same decisions for the same seed. Scores are "higher is better" (UDR, MIG).

One generation of synchronous PBT as the authors run it (original-code-spec §2.5, §5.1, §5.2):

1. every member trains one generation and reports its score;
2. `stop_reason` on the best score of every generation so far: the end condition (best below
   `min_score`), then convergence, then the generation cap; on a stop, no exploit/explore;
3. after generation 0 only, when `big_init_population_factor` k > 1: keep
   `survivors_after_first_generation` (the best n // k) and continue with those;
4. `exploit_and_explore`: the bottom ceil(q n) members each clone a uniformly random member of
   the top ceil(q n) (weights, optimizer state, hyperparameters), then each of lr, batch size
   and beta is multiplied by its own draw from `perturb_factors`.

Departures from the authors' code (spec §8.2), each a policy field or a documented rule:

* Bounds. The authors' explore is unbounded: lr grows past 1, beta without limit, and the batch
  size can shrink to 1, which BatchNorm cannot train on (bug 11). Here lr, batch size and beta
  are clipped into [min, max] after every perturbation (defaults and why: `PBTPolicy`).
* Non-finite scores. A diverged member (NaN or inf score) or one without a score ranks worst,
  and every such member is replaced at the next exploit, even when there are more of them than
  the bottom quantile (its weights are not finite, so training it further is wasted); donors are
  only finite-scored top members. The authors scored evaluation errors 0.0 and sorted NaN
  scores in no defined order.
* The quantile is capped at floor(n / 2), as in Ray's PBT (only matters for n = 1 at q = 0.2).
* A clone does not inherit its donor's RNG state (bug 9: identical data order and sampling noise
  from then on); it restarts its generator from `clone_seed`, recorded in its `Decision`.
* A cap on generations per metaEpoch (`max_generations`); the authors had none (bug 6).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EXPLOIT_EVENT",
    "HYPERPARAMETERS",
    "Decision",
    "PBTPolicy",
    "StopReason",
    "best_score",
    "clone_seed",
    "decisions_frame",
    "exploit_and_explore",
    "generation_rng",
    "initial_hyperparameters",
    "is_converged",
    "perturb",
    "quantile_size",
    "rank",
    "select",
    "stop_reason",
    "survivors_after_first_generation",
]

# The PBT hyperparameters, in the order explore draws their factors (authors'
# `utils.exploit_and_explore`). "beta" is absent for objectives without it (e.g. "vae").
HYPERPARAMETERS: tuple[str, ...] = ("lr", "batch_size", "beta")
_REQUIRED = ("lr", "batch_size")

# Value of the "event" key of a decision's JSON line, so decisions can share an events log.
EXPLOIT_EVENT = "exploit"

StopReason = Literal["below_min_score", "converged", "max_generations"]

# Spawn-key prefixes that keep the policy's RNG streams and the clones' seeds apart.
_POLICY_STREAM = 0
_CLONE_STREAM = 1

# Authors' init grids (spec 2.4): batch sizes 2**3..2**10; the 23 distinct int(1.5**t) for
# t in linspace(1, 15, 24); 30 log-spaced learning rates from 1e-5 to 1.
_BATCH_SIZE_GRID = (8, 16, 32, 64, 128, 256, 512, 1024)
_BETA_GRID = (
    1, 2, 3, 4, 5, 6, 8, 10, 13, 17, 22, 28, 37, 47, 60, 77, 99, 127, 163, 208, 267, 342, 437,
)  # fmt: skip
# Clipped: some numpy versions round logspace's first point 1 ulp below 1e-5 (= lr_min).
_LR_GRID = tuple(float(lr) for lr in np.clip(np.logspace(-5, 0, 30), 1e-5, 1.0))


@dataclass(frozen=True)
class PBTPolicy:
    """Every constant of the PBT policy. Defaults are the authors' values where they had one
    (spec 2.4, 2.5, 5.1, 5.2) and ours, with the reason, where they had none.

    The defaults describe the UDR runs (x-run and leaf-run metaEpochs). The authors' final
    supervised run (ClassicExplorer, spec 5.7) is `PBTPolicy(convergence_patience=None,
    min_score=None, max_generations=17, big_init_population_factor=2)` (max_epoch 15 evaluates
    generations 0..16).

    Sequences may be given as lists (e.g. from YAML); they are stored as tuples.

    Attributes:
      quantile_fraction: q. The top and bottom ceil(q n) members, capped at n // 2, are the
        donors and the replaced members. Authors: 0.2 (12 of 56, 6 of 28). In (0, 0.5].
      perturb_factors: each hyperparameter is multiplied by one independent uniform draw from
        these. Authors: (2, 1.2, 0.8, 0.5).
      lr_min, lr_max: explore clips lr into this range. Ours (authors: unbounded): the authors'
        own init range [1e-5, 1], so explore never leaves the region the authors sampled from;
        without a floor a run of 0.5 factors drives lr towards 0 where training stalls, without
        a ceiling it grows past any value Adam can train with.
      batch_size_min, batch_size_max: explore clips the batch size (after rounding up) into
        this range. Authors: max 1024 (memory), no min (ceil kept it >= 1). Ours: min 2,
        because BatchNorm cannot train on one image and the minibatch TC estimator needs two
        (the engine clamps to 2 as well).
      beta_min, beta_max: explore clips beta (an integer, rounded up) into this range. Authors:
        min 1 (by rounding up), no max. Ours: max 1000, about one doubling above the largest
        init value (437 -> 874): beyond that the TC penalty only collapses latents, and with no
        ceiling beta can double without limit.
      batch_size_grid, lr_grid, beta_grid: initial values, each drawn uniformly (spec 2.4).
      convergence_threshold, convergence_patience: a metaEpoch has converged when the best
        score changed by less than the threshold in each of the last `patience` generation
        transitions (patience + 1 generations). Authors: 0.005 and 6 (spec 5.1). None
        disables the rule.
      min_score: end condition: stop when the best score of a generation is below it. Authors:
        0.1 in every UDR run, hard-coded (spec 5.2); None for supervised runs.
      max_generations: stop after this many generations of one PBT run (metaEpoch). Ours
        (authors: none): 30, four times the earliest possible convergence (7 generations) and
        more than the authors' longest fixed run (28 generations, supervised reference run), so
        it only cuts runs that would not converge. None disables the cap.
      big_init_population_factor: k. Start with the population n and keep only the best
        n // k after generation 0 (56 -> 28 with k = 2). Authors: 1 in UDR runs, 2 in the
        supervised runs.
    """

    quantile_fraction: float = 0.2
    perturb_factors: tuple[float, ...] = (2.0, 1.2, 0.8, 0.5)
    lr_min: float = 1e-5
    lr_max: float = 1.0
    batch_size_min: int = 2
    batch_size_max: int = 1024
    beta_min: int = 1
    beta_max: int = 1000
    batch_size_grid: tuple[int, ...] = _BATCH_SIZE_GRID
    lr_grid: tuple[float, ...] = _LR_GRID
    beta_grid: tuple[int, ...] = _BETA_GRID
    convergence_threshold: float = 0.005
    convergence_patience: int | None = 6
    min_score: float | None = 0.1
    max_generations: int | None = 30
    big_init_population_factor: int = 1

    def __post_init__(self) -> None:
        for name in ("perturb_factors", "batch_size_grid", "lr_grid", "beta_grid"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first out-of-range field (run on construction)."""
        if not 0 < self.quantile_fraction <= 0.5:
            raise ValueError(f"quantile_fraction must be in (0, 0.5], got {self.quantile_fraction}")
        if not self.perturb_factors:
            raise ValueError("perturb_factors must not be empty")
        if not all(_positive(f) for f in self.perturb_factors):
            raise ValueError(f"perturb_factors must be finite and > 0, got {self.perturb_factors}")
        lr_bounds = [self.lr_min, self.lr_max]
        if not all(_positive(bound) for bound in lr_bounds):
            raise ValueError(f"lr bounds must be finite and > 0, got {lr_bounds}")
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min {self.lr_min} > lr_max {self.lr_max}")
        _check_int_bounds("batch_size", self.batch_size_min, self.batch_size_max, lowest=2)
        _check_int_bounds("beta", self.beta_min, self.beta_max, lowest=1)
        for name, lo, hi, integral in (
            ("batch_size_grid", self.batch_size_min, self.batch_size_max, True),
            ("lr_grid", self.lr_min, self.lr_max, False),
            ("beta_grid", self.beta_min, self.beta_max, True),
        ):
            grid = getattr(self, name)
            if not grid:
                raise ValueError(f"{name} must not be empty")
            if integral and not all(_is_int(v) for v in grid):
                raise ValueError(f"{name} must hold integers, got {grid}")
            outside = [v for v in grid if not lo <= v <= hi]
            if outside:
                raise ValueError(f"{name} values {outside} are outside the bounds [{lo}, {hi}]")
        if not _positive(self.convergence_threshold):
            raise ValueError(
                f"convergence_threshold must be finite and > 0, got {self.convergence_threshold}"
            )
        for name in ("convergence_patience", "max_generations"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise ValueError(f"min_score must be finite or None, got {self.min_score}")
        factor = self.big_init_population_factor
        if not (_is_int(factor) and factor >= 1):
            raise ValueError(f"big_init_population_factor must be an integer >= 1, got {factor!r}")


@dataclass(frozen=True)
class Decision:
    """One exploit/explore decision: `member` is replaced by a clone of `donor` (weights,
    optimizer state) with the hyperparameters `new_hparams`, and restarts its RNG from `seed`.

    Attributes:
      generation: the generation whose scores made the decision (0-based within the metaEpoch).
      member, donor: member ids: the member index as a string in both executors (the seed of a
        clone derives from it).
      member_score: the replaced member's score; None when it had none or it was not finite.
      donor_score: the donor's score (always finite).
      old_hparams: the replaced member's PBT hyperparameters.
      donor_hparams: the donor's PBT hyperparameters (the base of the perturbation).
      new_hparams: the clone's PBT hyperparameters, perturbed and clipped.
      factors: the perturbation factor drawn for each hyperparameter.
      seed: the clone's new RNG seed (`clone_seed`), replacing the donor's RNG state.
    """

    generation: int
    member: str
    donor: str
    member_score: float | None
    donor_score: float
    old_hparams: dict[str, float]
    donor_hparams: dict[str, float]
    new_hparams: dict[str, float]
    factors: dict[str, float]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """The decision as one strict-JSON object (no NaN) with `"event": EXPLOIT_EVENT`, for
        one line of an events log (`json.dumps(decision.to_dict())`); see `decisions_frame`."""
        return {"event": EXPLOIT_EVENT, **asdict(self)}


def initial_hyperparameters(policy: PBTPolicy, rng: np.random.Generator) -> dict[str, float]:
    """Draws a member's initial lr, batch size and beta uniformly from the policy's grids.

    Drawn in the authors' order beta, batch_size, lr (spec 2.4), one `rng.integers` each.

    Returns:
      {"lr": float, "batch_size": int, "beta": int}.
    """
    beta = policy.beta_grid[rng.integers(len(policy.beta_grid))]
    batch_size = policy.batch_size_grid[rng.integers(len(policy.batch_size_grid))]
    lr = policy.lr_grid[rng.integers(len(policy.lr_grid))]
    return {"lr": float(lr), "batch_size": int(batch_size), "beta": int(beta)}


def rank(scores: Mapping[str, float | None]) -> list[str]:
    """Member ids ordered best first by score.

    The sort is stable (tied members keep the mapping's order), and None, NaN and +-inf (a
    diverged or unscored member) count as worse than every finite score.
    """
    return sorted(scores, key=lambda member: -_score(scores[member]))


def best_score(scores: Mapping[str, float | None]) -> float:
    """The best finite score of a generation; -inf when no member has one (the value to append
    to the per-generation history that `is_converged` and `stop_reason` read)."""
    return max((_score(value) for value in scores.values()), default=-math.inf)


def quantile_size(population_size: int, policy: PBTPolicy) -> int:
    """ceil(q n) capped at n // 2, as Ray's PBT: 12 of 56, 6 of 28, 1 of 4, 1 of 2, 0 of 1."""
    return min(math.ceil(policy.quantile_fraction * population_size), population_size // 2)


def select(
    scores: Mapping[str, float | None], policy: PBTPolicy, rng: np.random.Generator
) -> dict[str, str]:
    """Truncation selection: who is replaced, and by a clone of whom.

    The bottom `quantile_size` members by `rank`, plus every member without a finite score,
    each get a donor drawn uniformly with replacement from the finite-scored members of the top
    `quantile_size`. Everyone else is untouched. One `rng.integers` call draws all donors.

    Returns:
      {replaced member: donor} in rank order (best replaced member first); empty when the
      population has fewer than 2 members or no finite score.
    """
    ranking = rank(scores)
    cutoff = quantile_size(len(ranking), policy)
    donors = [m for m in ranking[:cutoff] if math.isfinite(_score(scores[m]))]
    if not donors:
        return {}
    first_bottom = len(ranking) - cutoff
    replaced = [
        member
        for i, member in enumerate(ranking)
        if i >= first_bottom or not math.isfinite(_score(scores[member]))
    ]
    picks = rng.integers(len(donors), size=len(replaced))
    return {member: donors[pick] for member, pick in zip(replaced, picks, strict=True)}


def perturb(
    hparams: Mapping[str, float], policy: PBTPolicy, rng: np.random.Generator
) -> tuple[dict[str, float], dict[str, float]]:
    """Explore: multiplies each PBT hyperparameter by its own draw from `perturb_factors`.

    lr *= f, clipped to [lr_min, lr_max]; batch_size = ceil(f * batch_size) and beta =
    ceil(f * beta), integers clipped to their [min, max]. Factors are drawn in the order of
    `HYPERPARAMETERS`, one `rng.integers` each.

    Args:
      hparams: at least "lr" and "batch_size", and "beta" if the objective has it. Other keys
        (e.g. a whole Tune config) are ignored: merge the result into the donor's config.

    Returns:
      (new hyperparameters, factor used per hyperparameter), both keyed like the PBT
      hyperparameters present in `hparams`.
    """
    missing = [name for name in _REQUIRED if name not in hparams]
    if missing:
        raise ValueError(f"hyperparameters {missing} missing from {dict(hparams)}")
    new: dict[str, float] = {}
    factors: dict[str, float] = {}
    for name in HYPERPARAMETERS:
        if name not in hparams:
            continue
        factor = float(policy.perturb_factors[rng.integers(len(policy.perturb_factors))])
        value = factor * float(hparams[name])
        factors[name] = factor
        if name == "lr":
            new[name] = min(max(value, policy.lr_min), policy.lr_max)
        elif name == "batch_size":
            new[name] = min(max(math.ceil(value), policy.batch_size_min), policy.batch_size_max)
        else:
            new[name] = min(max(math.ceil(value), policy.beta_min), policy.beta_max)
    return new, factors


def exploit_and_explore(
    scores: Mapping[str, float | None],
    hparams_by_member: Mapping[str, Mapping[str, float]],
    policy: PBTPolicy,
    rng: np.random.Generator,
    *,
    generation: int,
    seed: int | Sequence[int],
) -> list[Decision]:
    """One generation's exploit/explore: `select`, then `perturb` each donor's hyperparameters.

    The caller applies each decision: copy the donor's weights and optimizer state to the
    member, set `new_hparams` (re-applying lr to the optimizer after loading, whose state holds
    the donor's lr) and reseed the member's generator from `seed`. Members without a decision
    continue unchanged.

    Args:
      scores: this generation's score per member.
      hparams_by_member: every member's current PBT hyperparameters (same keys as `scores`).
      rng: draws donors, then the factors of each replaced member in order (`generation_rng`
        makes it reproducible after a restart).
      generation: the generation these scores belong to (0-based within the metaEpoch).
      seed: identifies this PBT run (see `clone_seed`).

    Returns:
      One `Decision` per replaced member, in rank order.
    """
    if set(scores) != set(hparams_by_member):
        raise ValueError(
            f"scores and hyperparameters name different members: {sorted(scores)} vs "
            f"{sorted(hparams_by_member)}"
        )
    decisions = []
    for member, donor in select(scores, policy, rng).items():
        new, factors = perturb(hparams_by_member[donor], policy, rng)
        member_score = _score(scores[member])
        decisions.append(
            Decision(
                generation=generation,
                member=member,
                donor=donor,
                member_score=member_score if math.isfinite(member_score) else None,
                donor_score=_score(scores[donor]),
                old_hparams=_pbt_hparams(hparams_by_member[member]),
                donor_hparams=_pbt_hparams(hparams_by_member[donor]),
                new_hparams=new,
                factors=factors,
                seed=clone_seed(seed, generation, member),
            )
        )
    return decisions


def survivors_after_first_generation(
    scores: Mapping[str, float | None], policy: PBTPolicy
) -> list[str]:
    """The members kept after generation 0 with `big_init_population_factor` k: the best
    n // k by `rank` (at least 2, as PBT needs two members), best first. The others are dropped
    (stopped); exploit/explore then runs on the survivors in the same generation (spec 2.5)."""
    ranking = rank(scores)
    return ranking[: max(2, len(ranking) // policy.big_init_population_factor)]


def is_converged(best_scores: Sequence[float | None], policy: PBTPolicy) -> bool:
    """metaEpoch convergence (spec 5.1): |s_t - s_(t-1)| < threshold for each of the last
    `convergence_patience` transitions of the per-generation best scores s.

    With the defaults the earliest convergence is after 7 generations; fewer -> False. A
    non-finite best score breaks the run of small changes. Always False when the patience is
    None.
    """
    patience = policy.convergence_patience
    if patience is None or len(best_scores) <= patience:
        return False
    window = [_score(s) for s in best_scores[-(patience + 1) :]]
    return all(
        abs(after - before) < policy.convergence_threshold
        for before, after in itertools.pairwise(window)
    )


def stop_reason(best_scores: Sequence[float | None], policy: PBTPolicy) -> StopReason | None:
    """Why the PBT run (one metaEpoch) stops after the latest generation, or None to go on.

    Checked in the authors' order (spec 5.2), then our cap: "below_min_score" (the latest best
    score is below `min_score` or not finite: the leaf-run end condition), "converged"
    (`is_converged`), "max_generations" (len(best_scores) >= `max_generations`).

    Args:
      best_scores: the best score of every generation of this run so far, oldest first
        (`best_score` of each generation); its length is the number of generations done.
    """
    if not best_scores:
        return None
    if policy.min_score is not None and _score(best_scores[-1]) < policy.min_score:
        return "below_min_score"
    if is_converged(best_scores, policy):
        return "converged"
    if policy.max_generations is not None and len(best_scores) >= policy.max_generations:
        return "max_generations"
    return None


def generation_rng(seed: int | Sequence[int], generation: int) -> np.random.Generator:
    """The policy RNG for one generation of a PBT run.

    Derived from (seed, generation) alone, so a scheduler restored mid-run (Tune does not
    persist scheduler state) makes the same decisions as an uninterrupted run.

    Args:
      seed: identifies the PBT run, e.g. (experiment seed, leaf-run, metaEpoch): generations
        restart at 0 every metaEpoch, so a bare experiment seed would repeat the draws.
    """
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_POLICY_STREAM, generation))
    )


def clone_seed(seed: int | Sequence[int], generation: int, member: str) -> int:
    """The new RNG seed of `member` when it becomes a clone at `generation`.

    A clone must not continue its donor's RNG state (the authors' bug 9: parent and clone would
    then draw the same data order and noise forever). The seed is a function of (run seed,
    generation, member id) through `numpy.random.SeedSequence`, independent of draw order.

    Args:
      seed: identifies the PBT run, as in `generation_rng`.

    Returns:
      An integer in [0, 2**63), so it fits a signed 64-bit column of the log.
    """
    key = (_CLONE_STREAM, generation, *member.encode("utf-8"))
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def decisions_frame(
    source: str | os.PathLike[str] | Iterable[Decision | Mapping[str, Any]],
) -> pd.DataFrame:
    """The exploit/explore decisions of a JSONL events log as a pandas DataFrame.

    Args:
      source: a JSONL file (one JSON object per line, e.g. `Decision.to_dict()`), or the
        records (dicts or `Decision`s) themselves. Records whose "event" is not
        `EXPLOIT_EVENT` are skipped, so the log may hold other events too.

    Returns:
      One row per decision. Hyperparameter dicts are flattened into columns such as
      "new_hparams.lr" and "factors.beta"; a missing member score is NaN.
    """
    import pandas as pd  # only analysis needs pandas; keep the policy import light for workers

    if isinstance(source, str | os.PathLike):
        with open(source, encoding="utf-8") as log:
            records: list[Any] = [json.loads(line) for line in log if line.strip()]
    else:
        records = [r.to_dict() if isinstance(r, Decision) else r for r in source]
    return pd.json_normalize([r for r in records if r.get("event") == EXPLOIT_EVENT])


def _score(value: float | None) -> float:
    """A score as a float, with None, NaN and +-inf (a diverged or unscored member) as -inf."""
    if value is None:
        return -math.inf
    value = float(value)
    return value if math.isfinite(value) else -math.inf


def _pbt_hparams(hparams: Mapping[str, Any]) -> dict[str, float]:
    """The PBT hyperparameters of a member's config, as plain Python numbers (for JSON)."""
    return {
        name: hparams[name].item() if isinstance(hparams[name], np.generic) else hparams[name]
        for name in HYPERPARAMETERS
        if name in hparams
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _check_int_bounds(name: str, lo: Any, hi: Any, lowest: int) -> None:
    if not (_is_int(lo) and _is_int(hi)):
        raise ValueError(f"{name} bounds must be integers, got [{lo!r}, {hi!r}]")
    if lo < lowest:
        raise ValueError(f"{name}_min must be >= {lowest}, got {lo}")
    if lo > hi:
        raise ValueError(f"{name}_min {lo} > {name}_max {hi}")
