"""Locatello et al. (2020)'s few-label semi-supervised VAE: the supervised regularisers against
disentanglement_lib's test values and hand computations, the fused engine against its models one
by one, the member's labelled training (RNG, state, gamma_sup = 0), a learning check and the
`train_semi_supervised` baseline."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import clustered_squares
from test_models import DATASET_SIZE, _images, _split, split_ensemble_grads

from rpu_ray import data
from rpu_ray.baseline import GRIDS, train_semi_supervised
from rpu_ray.engine import LabelledSet, Member, step_loss
from rpu_ray.evaluation import evaluation_positions
from rpu_ray.models import VAEEnsemble, make_loss
from rpu_ray.models.supervised import (
    SupervisedRegulariser,
    normalize_labels,
    supervised_cov,
    supervised_l2,
    supervised_l2_sigmoid,
    supervised_xent,
)

SHAPE = (1, 32, 32)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# ---------------------------------------------------------------- the regularisers


def test_normalize_labels_divides_by_the_number_of_classes() -> None:
    labels = torch.tensor([[0.0, 20.0], [3.0, 39.0]])
    expected = torch.tensor([[0.0, 0.5], [0.75, 0.975]])
    torch.testing.assert_close(normalize_labels(labels, torch.tensor([4, 40])), expected)
    # dSprites' factor sizes: every class maps into [0, 1).
    sizes = torch.tensor([3.0, 6.0, 40.0, 32.0, 32.0])
    top = normalize_labels(sizes - 1, sizes)
    torch.testing.assert_close(top, 1 - 1 / sizes)
    assert bool((top < 1).all())


def test_xent_matches_disentanglement_lib_test_values() -> None:
    # disentanglement_lib's semi_supervised_vae_test (sum over 64 images and the factors):
    # zero logits against zero labels: 64 * F * log 2; logits 1 against 0: 640 * (1 + log(1+1/e)).
    sizes5, sizes10 = torch.ones(5), torch.ones(10)
    value = supervised_xent(torch.zeros(2, 64, 10), torch.zeros(64, 5), sizes5)
    torch.testing.assert_close(value, torch.full((2,), 64 * 5 * math.log(2)))
    value = supervised_xent(torch.zeros(1, 64, 10), torch.zeros(64, 10), sizes10)
    assert value.item() == pytest.approx(221.807 * 2, abs=2e-3)
    value = supervised_xent(torch.ones(1, 64, 10), torch.zeros(64, 10), sizes10)
    assert value.item() == pytest.approx(640 * (1 + math.log(1 + math.exp(-1))), rel=1e-6)
    assert 840.47 < value.item() < 840.49


def test_xent_by_hand_uses_the_first_latents_and_normalised_labels() -> None:
    # One image, z = 3, two factors of 4 classes with labels 1 and 3: targets 0.25 and 0.75.
    mu = torch.tensor([[[2.0, -1.0, 100.0]], [[0.0, 0.0, -7.0]]])  # latent 2 is unsupervised
    labels = torch.tensor([[1.0, 3.0]])

    def bce(logit: float, target: float) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    expected = torch.tensor([bce(2.0, 0.25) + bce(-1.0, 0.75), 2 * math.log(2)])
    torch.testing.assert_close(supervised_xent(mu, labels, torch.tensor([4.0, 4.0])), expected)
    with pytest.raises(ValueError, match="latents"):
        supervised_xent(mu, torch.zeros(1, 4), torch.ones(4))


def test_l2_variants_by_hand() -> None:
    mu = torch.tensor([[[1.0, 2.0, 5.0], [3.0, -1.0, 5.0]]])  # (1, 2 images, 3 latents)
    labels = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    scale = torch.tensor([2.0], requires_grad=True)
    # (2*1-2)^2 + (2*2-0)^2 + (2*3-1)^2 + (2*-1-3)^2 = 0 + 16 + 25 + 25
    value = supervised_l2(mu, labels, scale)
    assert value.item() == pytest.approx(66.0)
    value.sum().backward()  # d/db sum (b mu - y)^2 = 2 sum mu (b mu - y) = 2 (0 + 8 + 15 + 5)
    assert scale.grad.item() == pytest.approx(56.0)
    sizes = torch.tensor([4.0, 4.0])
    sig = torch.sigmoid(mu[0, :, :2])
    expected = ((sig - labels / 4) ** 2).sum()  # image by image, not all pairs of images
    torch.testing.assert_close(supervised_l2_sigmoid(mu, labels, sizes), expected.reshape(1))


def test_cov_matches_disentanglement_lib_test_values_and_hand() -> None:
    # disentanglement_lib's test_cov_det: swapped one-hot codes give off-diagonals 0.25 -> 0.125.
    mu = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert supervised_cov(mu, torch.tensor([[0.0, 1.0], [1.0, 0.0]])).item() == pytest.approx(
        0.125)
    assert supervised_cov(torch.zeros(2, 64, 10), torch.zeros(64, 5)).tolist() == [0.0, 0.0]
    # Independent latents against themselves: only the (zeroed) diagonal covaries.
    samples = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0))
    assert supervised_cov(samples[None], samples).item() < 0.01
    # Rectangular (z = 3 latents, F = 2 factors), against numpy's biased covariance.
    rng = np.random.default_rng(1)
    codes, labels = rng.normal(size=(6, 3)), rng.integers(0, 5, size=(6, 2)).astype(float)
    full = np.cov(np.hstack([codes, labels]).T, bias=True)[:3, 3:]
    full[0, 0] = full[1, 1] = 0
    value = supervised_cov(torch.tensor(codes)[None], torch.tensor(labels))
    assert value.item() == pytest.approx(float((full**2).sum()), rel=1e-12)


def test_regulariser_module_and_labelled_set_validate() -> None:
    with pytest.raises(ValueError, match="unknown supervised loss"):
        SupervisedRegulariser(2, "embed")
    assert [p.shape for p in SupervisedRegulariser(3, "l2").parameters()] == [(3,)]
    assert list(SupervisedRegulariser(3, "xent").parameters()) == []
    regulariser, sizes = SupervisedRegulariser(2, "xent"), torch.tensor([2.0, 2.0])
    with pytest.raises(ValueError, match="built for 2 models, got 3"):
        regulariser(torch.zeros(3, 4, 2), torch.zeros(4, 2, dtype=torch.long), sizes)
    with pytest.raises(ValueError, match=r"labels must be \(B, F\) for B = 4"):
        regulariser(torch.zeros(2, 4, 2), torch.zeros(5, 2, dtype=torch.long), sizes)
    images = torch.zeros(4, *SHAPE, dtype=torch.uint8)
    with pytest.raises(ValueError, match="L >= 2"):
        LabelledSet(images[:1], torch.zeros(1, 2, dtype=torch.long), torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="class indices"):
        LabelledSet.from_arrays(images, np.full((4, 2), 2), [2, 2])
    with pytest.raises(ValueError, match="integer"):
        LabelledSet(images, torch.zeros(4, 2), torch.tensor([2.0, 2.0]))


# ---------------------------------------------------------------- fused = one by one


def _labelled_batch(count: int = 6, sizes: tuple[int, ...] = (3, 5, 8)
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    labels = torch.stack([torch.randint(0, s, (count,), generator=generator) for s in sizes], 1)
    return _images(count, SHAPE, seed=5), labels.float(), torch.tensor(sizes, dtype=torch.float32)


@pytest.mark.parametrize(("loss", "kind"), [("betatcvae", "xent"), ("betavae", "xent"),
                                            ("betatcvae", "l2"), ("betavae", "cov")])
def test_fused_loss_and_gradients_equal_each_model_on_its_own(loss: str, kind: str) -> None:
    torch.manual_seed(0)
    num_models, z_dim, batch = 3, 4, 8
    fused = VAEEnsemble(num_models, SHAPE, z_dim=z_dim)  # the authors' network, with BatchNorm
    singles = _split(fused)
    regulariser = SupervisedRegulariser(num_models, kind)
    if kind == "l2":
        with torch.no_grad():
            regulariser.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))
    hparams = {"beta": 3.0, "gamma_sup": 2.5}
    x, eps = _images(batch, SHAPE), torch.randn(num_models, batch, z_dim)
    x_labelled, labels, sizes = _labelled_batch()

    result = step_loss(fused, make_loss(loss, num_models, z_dim), x, eps, hparams, DATASET_SIZE,
                       supervised=regulariser, x_labelled=x_labelled, labels=labels,
                       factor_sizes=sizes)
    result.loss.sum().backward()
    fused_grads = split_ensemble_grads(fused)
    grad_atol = 1e-5 * max(p.grad.abs().max().item() for p in fused.parameters())

    for m, single in enumerate(singles):
        own = SupervisedRegulariser(1, kind)
        if kind == "l2":
            with torch.no_grad():
                own.scale.copy_(regulariser.scale[m : m + 1])
        expected = step_loss(single, make_loss(loss, 1, z_dim), x, eps[m : m + 1], hparams,
                             DATASET_SIZE, supervised=own, x_labelled=x_labelled, labels=labels,
                             factor_sizes=sizes)
        torch.testing.assert_close(result.loss[m], expected.loss[0], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(result.terms["supervised"][m],
                                   expected.terms["supervised"][0], rtol=1e-5, atol=1e-4)
        expected.loss.sum().backward()
        for name, param in single.named_parameters():
            torch.testing.assert_close(param.grad, fused_grads[m][name], rtol=1e-4,
                                       atol=grad_atol, msg=name)
        if kind == "l2":
            torch.testing.assert_close(own.scale.grad, regulariser.scale.grad[m : m + 1],
                                       rtol=1e-4, atol=1e-4)


def test_step_loss_is_the_objective_plus_gamma_sup_times_xent_of_the_means() -> None:
    torch.manual_seed(1)
    model = VAEEnsemble(2, SHAPE, z_dim=4, arch="dlib")
    x, eps = _images(8, SHAPE), torch.randn(2, 8, 4)
    x_labelled, labels, sizes = _labelled_batch()
    loss_fn = make_loss("betavae", 2, 4)
    hparams = {"beta": 2.0, "gamma_sup": 4.0}
    result = step_loss(model, loss_fn, x, eps, hparams, DATASET_SIZE,
                       supervised=SupervisedRegulariser(2, "xent"), x_labelled=x_labelled,
                       labels=labels, factor_sizes=sizes)
    with torch.no_grad():
        unsupervised = loss_fn(x, model(x, eps), hparams, DATASET_SIZE).loss
        mu = model.encode(x_labelled)[0][..., :3]
        xent = F.binary_cross_entropy_with_logits(mu, (labels / sizes).expand_as(mu),
                                                  reduction="none").sum((1, 2))
    torch.testing.assert_close(result.loss.detach(), unsupervised + 4.0 * xent)


# ---------------------------------------------------------------- the member


def _member(supervision: str | None = "xent", seed: int = 0, **hparams: float) -> Member:
    values = {"lr": 1e-3, "batch_size": 8, "beta": 4.0, "gamma_sup": 4.0, **hparams}
    if supervision is None:
        values.pop("gamma_sup")
    return Member(values, num_models=2, image_shape=SHAPE, z_dim=4, seed=seed,
                  supervision=supervision)


def _train_images(n: int = 24) -> torch.Tensor:
    return (_images(n, SHAPE, seed=11) * 255).to(torch.uint8)


def _labelled(n: int = 5) -> LabelledSet:
    rng = np.random.default_rng(3)
    return LabelledSet.from_arrays((_images(n, SHAPE, seed=12) * 255).to(torch.uint8),
                                   rng.integers(0, 4, size=(n, 2)), [4, 4])


def test_gamma_sup_zero_gives_exactly_the_unsupervised_step() -> None:
    plain, semi = _member(None), _member(gamma_sup=0.0)
    images, index = _train_images(), torch.arange(8)
    expected = plain.train_step(images, index)
    result = semi.train_step(images, index, _labelled())
    assert torch.equal(result.loss, expected.loss)
    assert float(result.terms["supervised"].min()) > 0  # computed, but weighted by 0
    for (name, a), b in zip(plain.model.named_parameters(), semi.model.parameters(),
                            strict=True):
        assert torch.equal(a, b), name


def test_without_labels_a_supervised_member_trains_as_a_plain_one() -> None:
    plain, semi = _member(None, seed=4), _member("l2", seed=4)
    images = _train_images()
    first, second = plain.train(images, 40), semi.train(images, 40)
    assert first["loss"] == second["loss"] and "supervised" not in second
    for (name, a), b in zip(plain.model.state_dict().items(), semi.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(plain.generator.get_state(), semi.generator.get_state())


def test_labelled_training_reports_the_term_and_needs_supervision() -> None:
    member = _member()
    result = member.train(_train_images(), 32, _labelled())
    assert len(result["supervised"]) == 2 and result["images_seen"] == 32
    assert not result["diverged"]
    with pytest.raises(ValueError, match="supervision"):
        _member(None).train(_train_images(), 16, _labelled())
    too_many = LabelledSet.from_arrays(torch.zeros(3, *SHAPE, dtype=torch.uint8),
                                       np.zeros((3, 5), int), [2] * 5)
    with pytest.raises(ValueError, match="latents"):
        member.train(_train_images(), 16, too_many)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        _member(None).set_hyperparameters(gamma_sup=1.0)


def test_labelled_batch_is_clamped_to_the_labelled_set(monkeypatch: pytest.MonkeyPatch) -> None:
    member = _member(batch_size=8)
    sizes: list[int] = []
    original = SupervisedRegulariser.forward

    def record(self, mu, labels, factor_sizes):
        sizes.append(mu.shape[1])
        return original(self, mu, labels, factor_sizes)

    monkeypatch.setattr(SupervisedRegulariser, "forward", record)
    member.train(_train_images(24), 24, _labelled(5))
    member.train(_train_images(24), 24, _labelled(12))
    assert sizes == [5, 5, 5, 8, 8, 8]


def test_state_round_trip_with_labels_continues_identically() -> None:
    images, labelled = _train_images(), _labelled()
    original = _member("l2", seed=1, gamma_sup=2.0)
    original.train(images, 40, labelled)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["config"]["supervision"] == "l2"

    restored = _member("l2", seed=9)
    restored.load_state_dict(state)
    assert restored.hyperparameters["gamma_sup"] == 2.0
    assert torch.equal(restored.supervised.scale, original.supervised.scale)
    assert not torch.equal(original.supervised.scale, torch.ones(2))  # the scale trains
    a, b = original.train(images, 40, labelled), restored.train(images, 40, labelled)
    assert a["loss"] == b["loss"] and a["supervised"] == b["supervised"]
    for (name, x), y in zip(original.model.state_dict().items(),
                            restored.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="configuration"):
        _member(None).load_state_dict(state)
    assert "supervised" not in _member(None).state_dict()  # unsupervised state unchanged


def test_supervision_aligns_the_first_latents_with_their_factors() -> None:
    """32 labelled of 128 images (4 x 4 square positions); 32 steps of beta-TCVAE. Measured
    over seeds 0-4: |corr(mu_k, factor_k)| >= 0.964 with gamma_sup = 4, <= 0.582 (mean 0.25-0.37)
    with gamma_sup = 0."""
    images, factors = clustered_squares(copies=8, seed=0)
    tensor = torch.from_numpy(images[:, None])
    positions = np.random.RandomState(0).permutation(len(images))[:32]
    labelled = LabelledSet.from_arrays(images[positions][:, None], factors[positions], [4, 4])

    def correlations(gamma_sup: float) -> np.ndarray:
        member = Member({"lr": 1e-3, "batch_size": 32, "beta": 1.0, "gamma_sup": gamma_sup},
                        num_models=2, image_shape=SHAPE, z_dim=4, arch="dlib", loss="betatcvae",
                        seed=0, supervision="xent")
        member.train(tensor, 1024, labelled)
        mu = member.encode(tensor)[0].numpy()
        return np.array([[abs(np.corrcoef(mu[m, :, k], factors[:, k])[0, 1]) for k in range(2)]
                         for m in range(2)])

    supervised, unsupervised = correlations(4.0), correlations(0.0)
    assert supervised.min() > 0.9
    assert supervised.mean() - unsupervised.mean() > 0.4


# ---------------------------------------------------------------- the baseline


def test_train_semi_supervised_rows_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = data.load("dsprites", image_size=32, subsample=[3, 3, 40, 4, 4])
    captured: dict[str, object] = {}
    original = LabelledSet.from_arrays.__func__

    def spy(cls, images, labels, factor_sizes, device="cpu"):
        captured.update(images=np.asarray(images), labels=np.asarray(labels),
                        sizes=list(factor_sizes))
        return original(cls, images, labels, factor_sizes, device)

    monkeypatch.setattr(LabelledSet, "from_arrays", classmethod(spy))
    member, rows = train_semi_supervised(
        dataset, "betatcvae", 4, seeds=2, images=96, labels=20, gamma_sup=1.0,
        factors=[3, 4], lr=1e-3, arch="dlib", seed=2,
        eval_points=(100, 100, 50), dci_mode="fast", udr_points=50)
    assert member.config["supervision"] == "xent" and member.hyperparameters["gamma_sup"] == 1.0
    assert member.hyperparameters["beta"] == 4.0 and GRIDS["betatcvae"].name == "beta"
    assert [r["seed"] for r in rows] == [0, 1]
    for row in rows:
        assert row["labels"] == 20 and row["gamma_sup"] == 1.0 and row["supervision"] == "xent"
        assert row["model_images"] == 96 and not row["diverged"]
        assert 0 <= row["mig"] <= 1 and 0 <= row["udr"] <= 1
    # The labelled images are the evaluation subset of `select_by_labels` (same seed), with the
    # chosen factors (posX, posY) and their class counts.
    positions = evaluation_positions(len(dataset), 20, 2)
    np.testing.assert_array_equal(captured["images"], dataset.all_images()[positions])
    np.testing.assert_array_equal(captured["labels"], dataset.all_factors()[positions][:, [3, 4]])
    assert captured["sizes"] == [32, 32]
    with pytest.raises(ValueError, match="no semi-supervised version"):
        train_semi_supervised(dataset, "annealedvae", 5, seeds=2, images=8)
