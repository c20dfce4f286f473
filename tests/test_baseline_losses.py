"""disentanglement_lib's baseline objectives (AnnealedVAE, DIP-VAE-I/II, FactorVAE): the fused
losses against per-model transcriptions of disentanglement_lib's formulas, closed-form cases, the
state they carry, their configuration and a member training with each."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from test_models import DATASET_SIZE, _images, _split, split_ensemble_grads

from rpu_ray.checkpoint import load_checkpoint, save_checkpoint
from rpu_ray.config import ConfigError, load_config
from rpu_ray.engine import Member
from rpu_ray.models import LOSSES, FactorVAELoss, VAEEnsemble, VAEOutput, make_loss
from rpu_ray.models.losses import shuffle_codes
from rpu_ray.population import member_hyperparameters

BASELINES = ("annealedvae", "dipvae1", "dipvae2", "factorvae")
SHAPE = (1, 32, 32)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# ---------------------------------------------------------------- disentanglement_lib, per model
# Transcriptions of disentanglement_lib (methods/unsupervised/vae.py, shared/losses.py and
# architectures.py) for one model: tensors (B, ...) of a single model, its z_logvar = 2 log sigma.


def _dlib_reconstruction(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """bernoulli_loss with logits: summed sigmoid cross-entropy, batch mean."""
    per_sample = F.binary_cross_entropy_with_logits(
        logits.flatten(1), x.flatten(1), reduction="none"
    ).sum(1)
    return per_sample.mean()


def _dlib_kl(z_mean: torch.Tensor, z_logvar: torch.Tensor) -> torch.Tensor:
    """compute_gaussian_kl."""
    return (0.5 * (z_mean.square() + z_logvar.exp() - z_logvar - 1).sum(1)).mean()


def _dlib_covariance_z_mean(z_mean: torch.Tensor) -> torch.Tensor:
    """compute_covariance_z_mean: E[mu mu^T] - E[mu] E[mu]^T."""
    expectation_mu_mu_t = (z_mean.unsqueeze(2) * z_mean.unsqueeze(1)).mean(0)
    expectation_mu = z_mean.mean(0)
    return expectation_mu_mu_t - expectation_mu.unsqueeze(1) * expectation_mu.unsqueeze(0)


def _dlib_dip(covariance: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """regularize_diag_off_diag_dip."""
    diagonal = torch.diagonal(covariance)
    off_diagonal = covariance - torch.diag(diagonal)
    return lambda_od * (off_diagonal**2).sum() + lambda_d * ((diagonal - 1) ** 2).sum()


def _dlib_discriminator(z: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]
                        ) -> torch.Tensor:
    """fc_discriminator's logits: dense layers with leaky ReLU 0.2 but after the last."""
    h = z
    for i, (weight, bias) in enumerate(layers):
        h = h @ weight + bias
        if i < len(layers) - 1:
            h = F.leaky_relu(h, 0.2)
    return h


def _dlib_loss(name: str, x: torch.Tensor, out: VAEOutput, hparams: dict[str, float],
               step: int, discriminator: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One model's training loss in disentanglement_lib (`out` holds that model's tensors)."""
    z_mean, z_logvar = out.mu, 2 * out.logsigma
    reconstruction = _dlib_reconstruction(x, out.logits)
    kl = _dlib_kl(z_mean, z_logvar)
    if name == "annealedvae":
        c_max, threshold = hparams["c_max"], hparams["iteration_threshold"]
        c = min(c_max * 1.0, c_max * 1.0 * step / threshold)
        return reconstruction + hparams["gamma"] * torch.abs(kl - c)
    if name in ("dipvae1", "dipvae2"):
        covariance = _dlib_covariance_z_mean(z_mean)
        if name == "dipvae2":
            covariance = torch.diag_embed(z_logvar.exp()).mean(0) + covariance
        return reconstruction + kl + _dlib_dip(covariance, hparams["lambda_od"],
                                               hparams["lambda_d"])
    logits = _dlib_discriminator(out.z, discriminator)
    tc = (logits[:, 0] - logits[:, 1]).mean(0)
    return reconstruction + kl + hparams["gamma"] * tc


@pytest.mark.parametrize("name", BASELINES)
def test_fused_loss_and_gradients_match_disentanglement_lib_per_model(name: str) -> None:
    torch.manual_seed(0)
    num_models, z_dim, batch = 3, 4, 8
    fused = VAEEnsemble(num_models, SHAPE, z_dim=z_dim, arch="dlib")
    singles = _split(fused)
    loss_fn = make_loss(name, num_models, z_dim)  # FactorVAE: dlib's 6 x 1000 discriminator
    hparams = dict(LOSSES[name].defaults)
    step = 0
    if name == "annealedvae":  # mid-schedule: C = 7.5
        hparams["iteration_threshold"] = 100.0
        step = 30
        loss_fn.step.fill_(step)
    x = _images(batch, SHAPE)
    eps = torch.randn(num_models, batch, z_dim)

    result = loss_fn(x, fused(x, eps), hparams, DATASET_SIZE)
    result.loss.sum().backward()
    fused_grads = split_ensemble_grads(fused)
    grad_atol = 1e-5 * max(p.grad.abs().max().item() for p in fused.parameters())

    for m, single in enumerate(singles):
        discriminator = [] if name != "factorvae" else [
            (w[m].detach(), b[m, 0].detach())
            for w, b in zip(loss_fn.discriminator.weights, loss_fn.discriminator.biases,
                            strict=True)
        ]
        single_out = VAEOutput._make(t[0] for t in single(x, eps[m : m + 1]))
        expected = _dlib_loss(name, x, single_out, hparams, step, discriminator)
        torch.testing.assert_close(result.loss[m], expected, rtol=1e-5, atol=1e-3)
        expected.backward()
        for param_name, param in single.named_parameters():
            torch.testing.assert_close(param.grad, fused_grads[m][param_name], rtol=1e-4,
                                       atol=grad_atol, msg=param_name)


# ---------------------------------------------------------------- AnnealedVAE


def _output(mu: torch.Tensor, logsigma: torch.Tensor, z: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, VAEOutput]:
    """Images and outputs with given codes: (M, B, z) tensors, logits of 2x2 images."""
    num_models, batch, _ = mu.shape
    x = _images(batch, (1, 2, 2))
    logits = torch.randn(num_models, batch, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    return x, VAEOutput(mu, logsigma, mu if z is None else z, logits)


def _recon(x: torch.Tensor, out: VAEOutput) -> torch.Tensor:
    return make_loss("vae")(x, out, {}, DATASET_SIZE).terms["recon"]


def test_annealed_vae_capacity_schedule_and_zero_regulariser_at_kl_equal_c() -> None:
    loss_fn = make_loss("annealedvae", 1, 5)
    hparams = {"gamma": 1000.0, "c_max": 5.0, "iteration_threshold": 100.0}
    # Two codes with mu = 2 in 5 latents (KL 0.5 * 5 * 2^2 = 10) and two with mu = 0 (KL 0),
    # sigma = 1: the batch-mean KL is 5 = c_max, exactly in float32. The penalty acts on the
    # batch mean: per sample, |KL - C| would not vanish at C = 5.
    mu = torch.tensor([2.0, 2.0, 0.0, 0.0]).view(1, 4, 1).expand(1, 4, 5)
    x, out = _output(mu, torch.zeros(1, 4, 5))
    recon = _recon(x, out).item()

    def capacity_and_loss() -> tuple[float, float]:
        result = loss_fn(x, out, hparams, DATASET_SIZE)
        assert result.terms["kl"].item() == 5.0
        return result.terms["capacity"].item(), result.loss.item()

    assert capacity_and_loss() == (0.0, pytest.approx(recon + 1000.0 * 5.0, rel=1e-6))
    for _ in range(50):
        loss_fn.after_step()
    assert capacity_and_loss() == (2.5, pytest.approx(recon + 1000.0 * 2.5, rel=1e-6))
    loss_fn.step.fill_(250)  # beyond the threshold C stays at c_max = KL: no regulariser
    assert capacity_and_loss() == (5.0, recon)


def test_annealed_vae_step_counter_survives_a_state_dict_round_trip() -> None:
    loss_fn = make_loss("annealedvae")
    for _ in range(7):
        loss_fn.after_step()
    buffer = io.BytesIO()
    torch.save(loss_fn.state_dict(), buffer)
    buffer.seek(0)
    restored = make_loss("annealedvae")
    assert restored.step.item() == 0
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.step.item() == 7
    assert restored.capacity(25.0, 100.0).item() == pytest.approx(1.75)


# ---------------------------------------------------------------- DIP-VAE


def test_dip_regulariser_closed_forms() -> None:
    # Model 0: four codes with mean 0 and E[mu mu^T] = I (whitened); model 1: the same times 2,
    # covariance 4 I; model 2: (1, 2) and (-1, -2) shifted by (3, -1), covariance
    # [[1, 2], [2, 4]] (the shift tests that the mean is removed).
    whitened = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    pair = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [1.0, 2.0], [-1.0, -2.0]]) + torch.tensor(
        [3.0, -1.0])
    mu = torch.stack([whitened, 2 * whitened, pair])
    # Posterior variances of model 2: dimension 0 has batch mean 1, dimension 1 batch mean 0.5.
    variance = torch.ones(3, 4, 2)
    variance[2] = torch.tensor([[0.5, 0.25], [1.5, 0.75], [0.5, 0.25], [1.5, 0.75]])
    x, out = _output(mu, 0.5 * variance.log())
    hparams = {"lambda_od": 10.0, "lambda_d": 100.0}

    dip_one = make_loss("dipvae1")(x, out, hparams, DATASET_SIZE)
    # 0; lambda_d * 2 * (4 - 1)^2; lambda_od * (2^2 + 2^2) + lambda_d * (0^2 + 3^2).
    expected = torch.tensor([0.0, 100.0 * 18, 10.0 * 8 + 100.0 * 9])
    torch.testing.assert_close(dip_one.terms["dip"], expected, rtol=1e-6, atol=1e-5)
    elbo_loss = -dip_one.terms["elbo"]
    torch.testing.assert_close(dip_one.loss, elbo_loss + expected, rtol=1e-6, atol=1e-4)

    dip_two = make_loss("dipvae2")(x, out, hparams, DATASET_SIZE)
    # The mean variances join the diagonal: models 0 and 1 get I more; model 2's covariance
    # becomes [[2, 2], [2, 4.5]].
    expected_two = torch.tensor(
        [100.0 * 2 * 1**2, 100.0 * 2 * 4**2, 10.0 * 8 + 100.0 * (1**2 + 3.5**2)])
    torch.testing.assert_close(dip_two.terms["dip"], expected_two, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------- FactorVAE


def _small_factor_vae(num_models: int = 2, z_dim: int = 2, seed: int = 0) -> FactorVAELoss:
    torch.manual_seed(seed)
    loss_fn = FactorVAELoss(num_models, z_dim, width=64, hidden_layers=3)
    loss_fn.generator = torch.Generator().manual_seed(seed)
    return loss_fn


def _correlated_output(batch: int = 64) -> tuple[torch.Tensor, VAEOutput]:
    """An easy case for the discriminator: both latents equal, which shuffling undoes."""
    base = torch.randn(2, batch, 1, generator=torch.Generator().manual_seed(1))
    z = base.expand(2, batch, 2).contiguous()
    return _output(z.clone(), torch.zeros_like(z), z)


def test_shuffle_codes_permutes_every_latent_of_every_model_on_its_own() -> None:
    z = torch.arange(3 * 50 * 4, dtype=torch.float32).view(3, 50, 4)
    shuffled = shuffle_codes(z, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shuffled.sort(dim=1).values, z, rtol=0, atol=0)
    # z[m, b, d] = 200 m + 4 b + d: the permutation of every (model, latent) column.
    orders = ((shuffled - z[:, :1]) / 4).round().long().permute(0, 2, 1).reshape(12, 50)
    assert len({tuple(order.tolist()) for order in orders}) == 12


def test_factor_vae_tc_is_zero_for_equal_logits_and_only_the_vae_gets_gradients() -> None:
    loss_fn = _small_factor_vae()
    with torch.no_grad():  # both logits of the last layer equal: TC = 0
        loss_fn.discriminator.weights[-1][..., 1] = loss_fn.discriminator.weights[-1][..., 0]
        loss_fn.discriminator.biases[-1][..., 1] = loss_fn.discriminator.biases[-1][..., 0]
    x, out = _correlated_output()
    result = loss_fn(x, out, {"gamma": 10.0}, DATASET_SIZE)
    torch.testing.assert_close(result.terms["tc"], torch.zeros(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(result.loss, -result.terms["elbo"], rtol=1e-6, atol=1e-4)

    fresh = _small_factor_vae()
    mu, logsigma, z, logits = (t.clone().requires_grad_() for t in out)
    result = fresh(x, VAEOutput(mu, logsigma, z, logits), {"gamma": 10.0}, DATASET_SIZE)
    assert result.terms["tc"].abs().min() > 1e-4
    result.loss.sum().backward()
    assert all(p.grad is None for p in fresh.discriminator.parameters())
    # z enters the loss only through TC (recon reads the logits, KL mu and sigma here).
    assert z.grad is not None and z.grad.abs().min() > 0
    # its discriminator is sized for 2 models of 2 latents
    with pytest.raises(ValueError, match="built for 2 models of 2 latents, got 3 of 2"):
        fresh(x, VAEOutput(*(torch.cat([t, t[:1]]) for t in out)), {"gamma": 10.0},
              DATASET_SIZE)


def test_factor_vae_discriminator_probabilities_are_clipped() -> None:
    # A saturated discriminator (logit 0 ahead by 40 for every input): p0 = 1 - 4e-18 and
    # p1 = 4e-18 unclipped; disentanglement_lib clips both into [1e-6, 1 - 1e-6].
    loss_fn = _small_factor_vae()
    with torch.no_grad():
        loss_fn.discriminator.weights[-1].zero_()
        loss_fn.discriminator.biases[-1][..., 0] = 40.0
        loss_fn.discriminator.biases[-1][..., 1] = 0.0
    _, out = _correlated_output()
    loss = loss_fn.discriminator_loss(out.z, out.z.flip(1))
    expected = -0.5 * (math.log(1 - 1e-6) + math.log(1e-6))  # 6.9, not 20 unclipped
    torch.testing.assert_close(loss, torch.full((2,), expected), rtol=1e-5, atol=0)
    loss.sum().backward()  # no gradient where the clip holds: saturation stops sharpening
    assert all(p.grad is None or p.grad.abs().max() == 0
               for p in loss_fn.discriminator.parameters())


def test_factor_vae_after_step_trains_the_discriminator() -> None:
    loss_fn = _small_factor_vae()
    x, out = _correlated_output()
    shuffled = shuffle_codes(out.z, torch.Generator().manual_seed(2))
    with pytest.raises(RuntimeError, match="forward"):
        loss_fn.after_step()
    # disentanglement_lib's discriminator loss, -(0.5 mean log p0(z) + 0.5 mean log p1(shuffled)),
    # of the probabilities clipped to [1e-6, 1 - 1e-6] (make_discriminator).
    for m in range(2):
        layers = [(w[m], b[m, 0]) for w, b in
                  zip(loss_fn.discriminator.weights, loss_fn.discriminator.biases, strict=True)]
        probs_z = F.softmax(_dlib_discriminator(out.z[m], layers), dim=1).clamp(1e-6, 1 - 1e-6)
        probs_shuffle = F.softmax(_dlib_discriminator(shuffled[m], layers),
                                  dim=1).clamp(1e-6, 1 - 1e-6)
        expected = -(0.5 * torch.log(probs_z[:, 0]).mean()
                     + 0.5 * torch.log(probs_shuffle[:, 1]).mean())
        torch.testing.assert_close(loss_fn.discriminator_loss(out.z, shuffled)[m], expected)

    before = loss_fn.discriminator_loss(out.z, shuffled).detach()
    tc_before = loss_fn(x, out, {"gamma": 10.0}, DATASET_SIZE).terms["tc"]
    weights = [w.detach().clone() for w in loss_fn.discriminator.weights]
    for _ in range(30):
        loss_fn(x, out, {"gamma": 10.0}, DATASET_SIZE)
        loss_fn.after_step()
    assert all((w - new).abs().max() > 1e-4
               for w, new in zip(weights, loss_fn.discriminator.weights, strict=True))
    after = loss_fn.discriminator_loss(out.z, shuffled).detach()
    assert torch.all(after < before - 0.01), (before, after)
    # Telling dependent codes apart from shuffled ones raises the TC estimate of dependent ones.
    tc_after = loss_fn(x, out, {"gamma": 10.0}, DATASET_SIZE).terms["tc"]
    assert torch.all(tc_after > tc_before + 0.02), (tc_before, tc_after)


def test_factor_vae_state_dict_round_trip_continues_identically() -> None:
    x, out = _correlated_output()
    original = _small_factor_vae(seed=0)
    for _ in range(3):
        original(x, out, {"gamma": 10.0}, DATASET_SIZE)
        original.after_step()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    from_file, in_memory = _small_factor_vae(seed=1), _small_factor_vae(seed=2)
    assert not torch.equal(from_file.discriminator.weights[0], original.discriminator.weights[0])
    from_file.load_state_dict(torch.load(buffer, weights_only=True))
    # The live state: the copy must not share Adam's moments, which steps update in place.
    in_memory.load_state_dict(original.state_dict())
    state = from_file.optimizer.state_dict()["state"]
    assert len(state) == 8 and all(int(s["step"]) == 3 for s in state.values())
    copies = (original, from_file, in_memory)
    for loss_fn in copies:
        loss_fn.generator.manual_seed(5)
    for _ in range(2):
        tcs = []
        for loss_fn in copies:
            tcs.append(loss_fn(x, out, {"gamma": 10.0}, DATASET_SIZE).terms["tc"])
            loss_fn.after_step()
        assert torch.equal(tcs[0], tcs[1]) and torch.equal(tcs[0], tcs[2])
    for name, tensor in original.discriminator.state_dict().items():
        for copy in copies[1:]:
            assert torch.equal(tensor, copy.discriminator.state_dict()[name]), name


# ---------------------------------------------------------------- configuration and engine


def test_config_resolves_fixed_hyperparameters_and_rejects_bad_ones() -> None:
    experiment = load_config(overrides=["model.loss=factorvae",
                                        "model.loss_hyperparameters.gamma=30"])
    pbt = {"lr": 1e-3, "batch_size": 8, "beta": 4}
    assert member_hyperparameters(experiment, pbt) == {"lr": 1e-3, "batch_size": 8,
                                                       "gamma": 30.0}
    annealed = load_config(overrides=["model.loss=annealedvae"])
    assert member_hyperparameters(annealed, pbt) == {
        "lr": 1e-3, "batch_size": 8, "gamma": 1000.0, "c_max": 25.0,
        "iteration_threshold": 100_000.0}
    assert member_hyperparameters(load_config(), pbt) == pbt  # betatcvae: beta from PBT
    for overrides, message in [
        (["model.loss=dipvae1", "model.loss_hyperparameters.lambda_0d=1"],
         "'lambda_0d' is not one of its hyperparameters"),
        (["model.loss=betavae", "model.loss_hyperparameters.beta=3"],
         "'beta' is tuned per member"),
        (["model.loss=annealedvae", "model.loss_hyperparameters.iteration_threshold=0"],
         "iteration_threshold must be > 0"),
        (["model.loss=dipvae2", "model.loss_hyperparameters.lambda_d=-1"], "finite number >= 0"),
        (["model.loss=factorvae", "model.loss_hyperparameters=3"], "expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message) as raised:
            load_config(overrides=overrides)
        assert str(raised.value).startswith("model.loss_hyperparameters")
        assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match=r"missing hyperparameters \['gamma'\]"):
        Member({"lr": 1e-3, "batch_size": 8}, num_models=1, image_shape=SHAPE, z_dim=2,
               loss="factorvae")


def _devices() -> list:
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("name", BASELINES)
def test_member_trains_and_restores_from_a_checkpoint(name: str, device: str, tmp_path) -> None:
    hparams = {"lr": 1e-3, "batch_size": 8, **LOSSES[name].defaults}
    if name == "annealedvae":  # the capacity moves within the steps of this test
        hparams["iteration_threshold"] = 4.0
    options = {"num_models": 2, "image_shape": SHAPE, "z_dim": 3, "loss": name,
               "device": device}
    images = _images(24, SHAPE).mul(255).to(torch.uint8).to(device)
    rng_state = torch.get_rng_state()
    original, twin = Member(hparams, seed=1, **options), Member(hparams, seed=1, **options)
    # The seed alone makes the objective's initial state (FactorVAE's discriminator), and the
    # caller's global RNG is left alone.
    assert torch.equal(torch.get_rng_state(), rng_state)
    for key, tensor in original.loss_fn.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, twin.loss_fn.state_dict()[key]), key
    first = original.train(images, 24)
    assert not first["diverged"]
    assert all(math.isfinite(v) for key in ("loss", "recon", "kl") for v in first[key])
    save_checkpoint(tmp_path / "member.ckpt", original.state_dict())
    restored = Member(hparams, seed=2, **options)
    # Loaded to the CPU and copied to the device, as the Tune trainable restores a member.
    restored.load_state_dict(load_checkpoint(tmp_path / "member.ckpt"))

    again, resumed = original.train(images, 24), restored.train(images, 24)
    optimizers = [restored.optimizer]
    optimizers += [restored.loss_fn.optimizer] if name == "factorvae" else []
    for optimizer in optimizers:  # moments on the device; Adam's step counters where torch
        group = optimizer.param_groups[0]  # keeps them: the CPU unless fused or capturable
        on_device = group["fused"] or group["capturable"]
        assert {s["exp_avg"].device.type for s in optimizer.state.values()} == {device}
        assert {s["step"].device.type for s in optimizer.state.values()} == {
            device if on_device else "cpu"}
    for key, value in again.items():
        if key not in ("seconds", "model_images_per_s"):
            assert resumed[key] == value, key
    if name == "annealedvae":  # steps 0, 1, 2 of a threshold of 4: C = 0, 6.25, 12.5
        assert first["capacity"] == [6.25, 6.25]
        assert original.loss_fn.step.item() == restored.loss_fn.step.item() == 6
    for a, b in ((original.model, restored.model), (original.loss_fn, restored.loss_fn)):
        for key, tensor in a.state_dict().items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, b.state_dict()[key]), key
    if name == "factorvae":  # the discriminator's Adam state came along
        states = [m.loss_fn.optimizer.state_dict()["state"] for m in (original, restored)]
        assert len(states[0]) == 14
        for key, state in states[0].items():
            assert all(torch.equal(value, states[1][key][k]) for k, value in state.items())
