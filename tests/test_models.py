"""Fused VAE ensemble versus single models, and the objectives against plain formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from rpu_ray.models import (
    VAE,
    VAEEnsemble,
    VAEOutput,
    fuse_models,
    make_loss,
    split_ensemble,
)
from rpu_ray.models.losses import bernoulli_log_likelihood, register_loss

DATASET_SIZE = 1000


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _images(batch: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *shape, generator=generator)


def _split(ensemble: VAEEnsemble) -> list[VAE]:
    singles = []
    for state in split_ensemble(ensemble):
        single = VAE(**ensemble.config)
        single.load_state_dict(state)
        single.train(ensemble.training)
        singles.append(single)
    return singles


@pytest.mark.parametrize(
    ("arch", "channels", "expected"),
    [("authors", 1, 1_298_581), ("authors", 3, 1_300_631), ("dlib", 1, 690_517)],
)
def test_parameter_count_per_model(arch: str, channels: int, expected: int) -> None:
    single = VAE((channels, 64, 64), arch=arch)
    assert sum(p.numel() for p in single.parameters()) == expected
    fused = VAEEnsemble(5, (channels, 64, 64), arch=arch)
    assert sum(p.numel() for p in fused.parameters()) == 5 * expected


@pytest.mark.parametrize("arch", ["authors", "dlib"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_output_shapes(arch: str, channels: int, size: int) -> None:
    model = VAEEnsemble(2, (channels, size, size), z_dim=6, arch=arch)
    out = model(_images(3, (channels, size, size)))
    assert out.mu.shape == out.logsigma.shape == out.z.shape == (2, 3, 6)
    assert out.logits.shape == (2, 3, channels, size, size)
    # Every stride-2 stage halves the image down to the 4x4 map.
    stride2 = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(stride2) == int(math.log2(size // 4))


def test_unsupported_image_sizes() -> None:
    for shape in [(1, 48, 48), (1, 4, 4)]:
        with pytest.raises(ValueError, match="image size"):
            VAEEnsemble(2, shape)
    with pytest.raises(ValueError, match="square"):
        VAEEnsemble(2, (1, 64, 32))


@pytest.mark.parametrize(("args", "message"), [
    ((2, (1, 32, 32), 10, "resnet"), "unknown architecture 'resnet'"),
    ((0, (1, 32, 32)), "must be positive"),
    ((2, (1, 32, 32), 0), "must be positive"),
    ((2, (0, 32, 32)), "must be positive"),
])
def test_bad_ensemble_settings_are_rejected(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VAEEnsemble(*args)


def test_encoder_channels_are_interleaved_like_the_authors() -> None:
    # Output channel 2d of a model is mu_d and 2d+1 its log sigma (original-code-spec §1.1).
    model = VAEEnsemble(3, (1, 32, 32), z_dim=4)
    x = _images(5, (1, 32, 32))
    raw = model.encoder(x).flatten(1).view(5, 3, 8)
    mu, logsigma = model.encode(x)
    torch.testing.assert_close(mu, raw[:, :, 0::2].transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(logsigma, raw[:, :, 1::2].transpose(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["authors", "dlib"])
@pytest.mark.parametrize("training", [True, False])
def test_split_models_match_fused(arch: str, training: bool) -> None:
    torch.manual_seed(0)
    shape, num_models = (3, 32, 32), 3
    fused = VAEEnsemble(num_models, shape, z_dim=5, arch=arch)
    with torch.no_grad():  # move the BatchNorm running statistics away from their defaults
        for seed in range(3):
            fused(_images(8, shape, seed=10 + seed))
    fused.train(training)
    singles = _split(fused)
    x = _images(8, shape)
    eps = torch.randn(num_models, 8, 5)
    loss_fn = make_loss("betatcvae")
    hparams = {"beta": 6.0}

    out = fused(x, eps)
    fused_loss = loss_fn(x, out, hparams, DATASET_SIZE).loss
    fused_loss.sum().backward()
    fused_grads = split_ensemble_grads(fused)
    # Absolute tolerance on the scale of the gradients: a conv bias in front of BatchNorm has a
    # zero gradient up to rounding noise, which a relative tolerance cannot compare.
    grad_atol = 1e-5 * max(p.grad.abs().max().item() for p in fused.parameters())

    for m, single in enumerate(singles):
        single_out = single(x, eps[m : m + 1])
        for name, a, b in zip(VAEOutput._fields, single_out, out, strict=True):
            torch.testing.assert_close(a[0], b[m], rtol=1e-5, atol=1e-5, msg=name)
        single_loss = loss_fn(x, single_out, hparams, DATASET_SIZE).loss
        torch.testing.assert_close(single_loss[0], fused_loss[m], rtol=1e-5, atol=1e-4)
        single_loss.sum().backward()
        for name, param in single.named_parameters():
            torch.testing.assert_close(
                param.grad, fused_grads[m][name], rtol=1e-4, atol=grad_atol, msg=name
            )


def split_ensemble_grads(ensemble: VAEEnsemble) -> list[dict[str, torch.Tensor]]:
    """Per-model chunks of the fused parameters' gradients."""
    m = ensemble.num_models
    grads: list[dict[str, torch.Tensor]] = [{} for _ in range(m)]
    for name, param in ensemble.named_parameters():
        for part, chunk in zip(grads, param.grad.chunk(m), strict=True):
            part[name] = chunk
    return grads


def test_fuse_models_inverts_split() -> None:
    fused = VAEEnsemble(4, (1, 32, 32))
    refused = fuse_models(_split(fused))
    assert refused.num_models == 4
    original = fused.state_dict()
    for name, tensor in refused.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    with pytest.raises(ValueError, match="identical configurations"):
        fuse_models([VAE((1, 32, 32)), VAE((1, 32, 32), arch="dlib")])
    with pytest.raises(ValueError, match="identical configurations"):  # an ensemble of two
        fuse_models([VAEEnsemble(2, (1, 32, 32))])
    with pytest.raises(ValueError, match="at least one model"):
        fuse_models([])


def _random_output(num_models: int, batch: int, z_dim: int, shape: tuple[int, int, int]):
    generator = torch.Generator().manual_seed(1)
    mu = torch.randn(num_models, batch, z_dim, generator=generator)
    logsigma = 0.5 * torch.randn(num_models, batch, z_dim, generator=generator)
    z = mu + logsigma.exp() * torch.randn(num_models, batch, z_dim, generator=generator)
    logits = 4 * torch.randn(num_models, batch, *shape, generator=generator)
    logits[..., 0, 0] = 60.0  # saturated sigmoids exercise the authors' clamping
    logits[..., 0, 1] = -60.0
    return VAEOutput(mu, logsigma, z, logits)


def _direct_terms(x: torch.Tensor, out: VAEOutput, dataset_size: int) -> dict[str, torch.Tensor]:
    """beta-TCVAE pieces per model and sample, computed one pair of samples at a time."""
    num_models, batch, z_dim = out.z.shape
    terms = {
        k: torch.zeros(num_models, batch) for k in ("logpx", "logpz", "logqzx", "logqz", "prod")
    }
    log_bn = math.log(batch * dataset_size)
    for m in range(num_models):
        for i in range(batch):
            p = (torch.sigmoid(out.logits[m, i]) + 1e-8) * (1 - 2e-8)
            xi = x[i]
            terms["logpx"][m, i] = (
                xi * torch.log(p + 1e-8) + (1 - xi) * torch.log(1 - p + 1e-8)
            ).sum()
            zi = out.z[m, i]
            terms["logpz"][m, i] = Normal(0.0, 1.0).log_prob(zi).sum()
            terms["logqzx"][m, i] = (
                Normal(out.mu[m, i], out.logsigma[m, i].exp()).log_prob(zi).sum()
            )
            pair = torch.zeros(batch, z_dim)  # pair[j, d] = log q(z_i,d | x_j)
            for j in range(batch):
                pair[j] = Normal(out.mu[m, j], out.logsigma[m, j].exp()).log_prob(zi)
            terms["logqz"][m, i] = torch.logsumexp(pair.sum(1), 0) - log_bn
            terms["prod"][m, i] = (torch.logsumexp(pair, 0) - log_bn).sum()
    return terms


def test_tc_estimator_matches_direct_computation() -> None:
    shape = (2, 8, 8)
    x = _images(6, shape)
    out = _random_output(3, 6, 4, shape)
    beta = 7.0
    result = make_loss("betatcvae")(x, out, {"beta": beta}, DATASET_SIZE)
    d = _direct_terms(x, out, DATASET_SIZE)
    mi = d["logqzx"] - d["logqz"]
    tc = d["logqz"] - d["prod"]
    dwkl = d["prod"] - d["logpz"]
    expected_loss = -(d["logpx"] - mi - beta * tc - dwkl).mean(1)
    torch.testing.assert_close(result.loss, expected_loss, rtol=1e-5, atol=1e-3)
    expected = {
        "recon": -d["logpx"],
        "mi": mi,
        "tc": tc,
        "dwkl": dwkl,
        "kl": d["logqzx"] - d["logpz"],
        "elbo": d["logpx"] + d["logpz"] - d["logqzx"],
    }
    assert set(result.terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(
            result.terms[name], value.mean(1), rtol=1e-5, atol=1e-3, msg=name
        )


def test_bernoulli_likelihood_uses_the_authors_clamping() -> None:
    x = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    logits = torch.tensor([[[[-100.0, 100.0, 100.0, -100.0]]]])
    # p = (sigmoid + 1e-8) * (1 - 2e-8) is 1e-8 or 1 (in float32); a wrong saturated pixel costs
    # log(1e-8 + 1e-8) when x = 1 and log(1 - 1 + 1e-8) when x = 0, a right one costs 0.
    result = bernoulli_log_likelihood(x, logits.unsqueeze(0))
    assert result.shape == (1, 1)
    assert result.item() == pytest.approx(math.log(2e-8) + math.log(1e-8), abs=1e-4)


def test_beta_one_reduces_to_the_elbo() -> None:
    shape = (1, 8, 8)
    x = _images(7, shape)
    out = _random_output(2, 7, 3, shape)
    d = _direct_terms(x, out, DATASET_SIZE)
    elbo = (d["logpx"] + d["logpz"] - d["logqzx"]).mean(1)
    at_one = make_loss("betatcvae")(x, out, {"beta": 1.0}, DATASET_SIZE)
    torch.testing.assert_close(at_one.loss, -elbo, rtol=1e-5, atol=1e-3)
    at_four = make_loss("betatcvae")(x, out, {"beta": 4.0}, DATASET_SIZE)
    assert torch.all(at_four.loss > at_one.loss + 1.0)  # TC > 0 here, so beta must matter


def test_beta_vae_and_plain_vae_use_the_analytic_kl() -> None:
    shape = (1, 8, 8)
    x = _images(5, shape)
    out = _random_output(2, 5, 3, shape)
    q = Normal(out.mu, out.logsigma.exp())
    kl = torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).sum(-1).mean(1)
    recon = -bernoulli_log_likelihood(x, out.logits).mean(1)
    beta_vae = make_loss("betavae")(x, out, {"beta": 3.0}, DATASET_SIZE)
    torch.testing.assert_close(beta_vae.terms["kl"], kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(beta_vae.loss, recon + 3.0 * kl, rtol=1e-5, atol=1e-4)
    plain = make_loss("vae")(x, out, {}, DATASET_SIZE)
    torch.testing.assert_close(plain.loss, recon + kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(plain.terms["elbo"], -(recon + kl), rtol=1e-5, atol=1e-4)


def test_unknown_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("nope")
    with pytest.raises(ValueError, match="'betatcvae' is already registered"):
        register_loss("betatcvae")(type(make_loss("betatcvae")))


def test_one_adam_over_fused_parameters_equals_separate_adams() -> None:
    torch.manual_seed(0)
    shape, num_models = (1, 32, 32), 3
    fused = VAEEnsemble(num_models, shape, z_dim=4)
    singles = _split(fused)
    fused_adam = torch.optim.Adam(fused.parameters(), lr=1e-3)
    single_adams = [torch.optim.Adam(s.parameters(), lr=1e-3) for s in singles]
    loss_fn = make_loss("betatcvae")
    initial = fused.encoder[0].weight.detach().clone()
    for step in range(4):
        x = _images(8, shape, seed=step)
        fused_adam.zero_grad()
        loss_fn(x, fused(x), {"beta": 4.0}, DATASET_SIZE).loss.sum().backward()
        # Feed every single model its chunk of the fused gradients: this isolates the optimiser.
        for single, grads, adam in zip(
            singles, split_ensemble_grads(fused), single_adams, strict=True
        ):
            for name, param in single.named_parameters():
                param.grad = grads[name].clone()
            adam.step()
        fused_adam.step()
        for single, state in zip(singles, split_ensemble(fused), strict=True):
            for name, param in single.named_parameters():
                torch.testing.assert_close(param, state[name], rtol=1e-6, atol=1e-7, msg=name)
    # The comparison above is between trained weights, not initial ones.
    assert (fused.encoder[0].weight - initial).abs().max() > 1e-4
