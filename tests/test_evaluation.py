"""Member scoring: the fixed evaluation subset, UDR and supervised scores equal the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import reference_metrics as ref
import torch

from rpu_ray.config import EvalConfig
from rpu_ray.engine import Member
from rpu_ray.evaluation import (
    best_model,
    evaluation_positions,
    label_ground_truth,
    per_latent_kl,
    score_leaf_mig,
    score_supervised,
    score_udr,
)
from rpu_ray.metrics import authors_pseudo_kl, dci, gaussian_kl, mig, mig_per_factor, udr

HPARAMS = {"lr": 1e-3, "batch_size": 32, "beta": 4}


@pytest.fixture(scope="module")
def member_and_images() -> tuple[Member, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # Squares at random positions: two factors (x, y) with 8 classes each, plus a constant one.
    factors = np.stack([rng.integers(0, 8, 300), rng.integers(0, 8, 300),
                        np.zeros(300, int)], axis=1)
    images = np.zeros((300, 1, 32, 32), np.uint8)
    for i, (x, y, _) in enumerate(factors):
        images[i, 0, 4 + 3 * y: 10 + 3 * y, 4 + 3 * x: 10 + 3 * x] = 255
    member = Member(HPARAMS, num_models=3, image_shape=(1, 32, 32), seed=1)
    tensor = torch.from_numpy(images)
    member.train(tensor, 600)
    return member, tensor, factors


def test_evaluation_positions_are_the_authors_fixed_subset() -> None:
    positions = evaluation_positions(5000, 1000, seed=0)
    np.testing.assert_array_equal(positions, np.random.RandomState(0).permutation(5000)[:1000])
    np.testing.assert_array_equal(positions, evaluation_positions(5000, 1000, seed=0))
    assert len(evaluation_positions(300, 1000, seed=0)) == 300
    with pytest.raises(ValueError, match="cannot evaluate"):
        evaluation_positions(1, 10, seed=0)


@pytest.mark.parametrize("kl", ["gaussian", "authors"])
def test_udr_score_is_the_mean_of_udr_model_scores(member_and_images, kl: str) -> None:
    member, images, _ = member_and_images
    config = EvalConfig(udr_points=205, kl=kl)
    result = score_udr(member, images, config)
    positions = evaluation_positions(len(images), 205, config.score_seed)
    mu, logsigma = (t.double().numpy() for t in member.encode(images[positions]))
    if kl == "gaussian":
        kls = np.stack([gaussian_kl(m, s) for m, s in zip(mu, logsigma, strict=True)])
    else:  # the authors drop the points beyond whole batches of 10
        kls = np.stack([authors_pseudo_kl(m[:200], s[:200]) for m, s in
                        zip(mu, logsigma, strict=True)])
    expected = udr(mu, kls, empty_model_score=0.0)
    np.testing.assert_allclose(result["model_scores"], expected, rtol=0, atol=1e-12)
    assert result["score"] == pytest.approx(float(np.mean(expected)), abs=1e-12)
    np.testing.assert_allclose(result["kl"], kls, rtol=1e-12)
    assert result["filtered_latents"] == int((kls <= config.udr_kl_threshold).sum())
    # a filter at the median KL leaves out the lower half of the latents
    median = float(np.median(kls))
    filtered = score_udr(member, images, EvalConfig(udr_points=205, kl=kl,
                                                    udr_kl_threshold=median))
    assert filtered["filtered_latents"] == int((kls <= median).sum()) >= kls.size // 2


@pytest.mark.parametrize("num_points", [20, 64, 70])
def test_labelling_pseudo_kl_counts_a_partial_last_batch_as_one_batch(num_points: int) -> None:
    # The authors label with an unshuffled DataLoader of batch 32 that keeps the last partial
    # batch; their pseudo-KL is the unweighted mean of the per-batch vectors (spec 5.3).
    rs = np.random.RandomState(num_points)
    mu, logsigma = rs.randn(num_points, 10), rs.randn(num_points, 10) - 1.0
    batches = [authors_pseudo_kl(mu[i:i + 32], logsigma[i:i + 32], len(mu[i:i + 32]))
               for i in range(0, num_points, 32)]
    np.testing.assert_allclose(per_latent_kl(mu, logsigma, "authors"), np.mean(batches, axis=0),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="at least one point"):
        per_latent_kl(mu[:0], logsigma[:0], "authors")


def test_supervised_scores_drop_constant_factors_and_respect_the_label_budget(
        member_and_images) -> None:
    member, images, factors = member_and_images
    config = EvalConfig(mig_points=250, labels=120)
    result = score_supervised(member, images, factors, config)
    positions = evaluation_positions(len(images), 120, config.score_seed)
    mu = member.encode(images[positions])[0].double().numpy()
    expected = [mig(codes, factors[positions][:, :2]) for codes in mu]
    np.testing.assert_allclose(result["model_scores"], expected, rtol=0, atol=1e-12)
    assert result["score"] == pytest.approx(np.mean(expected))
    # MIG with the config's bins
    binned = score_supervised(member, images, factors, EvalConfig(mig_points=250, labels=120,
                                                                  mig_bins=7))
    np.testing.assert_allclose(binned["model_scores"],
                               [mig(codes, factors[positions][:, :2], num_bins=7)
                                for codes in mu], rtol=0, atol=1e-12)
    assert not np.allclose(binned["model_scores"], result["model_scores"])  # 20 bins differ
    # DCI: trained on the first half of the evaluation subset, tested on the second
    dci_config = EvalConfig(mig_points=200, dci_mode="fast", score_seed=2)
    dci_result = score_supervised(member, images, factors, dci_config, "dci")
    positions = evaluation_positions(len(images), 200, 2)
    mu = member.encode(images[positions])[0].double().numpy()
    labels = factors[positions][:, :2]
    expected = [dci(codes[:100], labels[:100], codes[100:], labels[100:], seed=2,
                    mode="fast")["disentanglement"] for codes in mu]
    np.testing.assert_allclose(dci_result["model_scores"], expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="every factor is constant"):
        score_supervised(member, images, np.zeros_like(factors), config)
    with pytest.raises(ValueError, match="unknown supervised metric"):
        score_supervised(member, images, factors, config, metric="sap")


def _reference_leaf_mig(member: Member, images: torch.Tensor, chains, points: int,
                        num_bins: int, seed: int) -> np.ndarray:
    """The authors' `compute_nmig_leaf` (spec 5.6) with disentanglement_lib's primitives, per
    VAE: one RandomState draws each level's points in turn; codes and surrogate labels are
    discretised per level; MIG over the label columns of all levels; median over chains."""
    rng = np.random.RandomState(seed)
    per_chain = []
    for chain in chains:
        gaps: list[list[float]] = [[] for _ in range(member.num_models)]
        for indices, labels in chain:
            take = rng.choice(len(indices), size=min(points, len(indices)), replace=False)
            mu = member.encode(images[indices[take]])[0].double().numpy()
            discrete_labels = ref._histogram_discretize(labels[take].T, num_bins)
            entropy = ref.discrete_entropy(discrete_labels)
            for m, codes in enumerate(mu):
                info = ref.discrete_mutual_info(ref._histogram_discretize(codes.T, num_bins),
                                                discrete_labels)
                ranked = np.sort(info, axis=0)[::-1]
                gaps[m].extend((ranked[0, j] - ranked[1, j]) / entropy[j]
                               for j in range(len(entropy)) if entropy[j] > 0)
        per_chain.append([np.mean(g) for g in gaps])
    return np.median(per_chain, axis=0)


def test_leaf_mig_is_the_authors_score_on_the_surrogate_label_chains(member_and_images) -> None:
    member, images, factors = member_and_images
    rng = np.random.default_rng(5)

    def noisy(columns: np.ndarray) -> np.ndarray:  # continuous surrogate labels
        return columns.astype(float) + rng.normal(0, 0.1, columns.shape)

    everything = np.arange(300)
    left, top = np.flatnonzero(factors[:, 0] < 4), np.flatnonzero(factors[:, 1] < 4)
    chains = [
        # root labels x and y; a deeper level labels y where x < 4, plus a constant column
        [(everything, noisy(factors[:, :2])),
         (left, np.column_stack([noisy(factors[left, 1]), np.ones(len(left))]))],
        [(everything, noisy(factors[:, :1])), (top, noisy(factors[top, :1]))],
        [(everything, noisy(factors[:, 1:2]))],
    ]
    config = EvalConfig(mig_points=120, mig_bins=10, score_seed=4)
    result = score_leaf_mig(member, images, chains, config)
    expected = _reference_leaf_mig(member, images, chains, 120, 10, 4)
    np.testing.assert_allclose(result["model_scores"], expected, rtol=0, atol=1e-12)
    assert result["score"] == pytest.approx(float(np.mean(expected)), abs=1e-12)
    # the bins are the config's: 20 bins give other scores
    other = score_leaf_mig(member, images, chains, EvalConfig(mig_points=120, score_seed=4))
    assert not np.allclose(other["model_scores"], expected)


def test_non_finite_codes_score_nan(member_and_images) -> None:
    _, images, factors = member_and_images
    broken = Member(HPARAMS, num_models=2, image_shape=(1, 32, 32), seed=2)
    with torch.no_grad():
        next(broken.model.parameters()).fill_(float("nan"))
    assert np.isnan(score_udr(broken, images, EvalConfig(udr_points=50))["score"])
    assert np.isnan(score_supervised(broken, images, factors, EvalConfig(mig_points=50))["score"])


def test_best_model_ignores_nan() -> None:
    assert best_model([0.2, float("nan"), 0.5, 0.5]) == 2
    assert best_model([float("nan"), 0.1]) == 1


def test_label_ground_truth_matches_each_label_to_its_factor() -> None:
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 4, 2000), np.zeros(2000, int),
                        rng.integers(0, 3, 2000)], axis=1)
    # latent 0 encodes factor "b" (column 2) exactly, latent 2 encodes "a", latent 1 is noise
    codes = np.stack([factors[:, 2] + 0.01 * rng.normal(size=2000), rng.normal(size=2000),
                      -2.0 * factors[:, 0] + 0.01 * rng.normal(size=2000)], axis=1)
    truth = label_ground_truth(codes, np.array([0, 2]), factors, ("a", "const", "b"))

    # the constant factor is left out; MIG is the library's on the remaining columns
    expected = mig_per_factor(codes, factors[:, [0, 2]])
    assert truth["mig_per_factor"] == pytest.approx({"a": expected[0], "b": expected[1]})
    assert set(truth["labels"]) == {0, 2}
    assert truth["labels"][0][0] == "b" and truth["labels"][2][0] == "a"
    # a code that determines its factor carries all of the factor's entropy
    assert [truth["labels"][z][1] for z in (0, 2)] == pytest.approx([1.0, 1.0])
