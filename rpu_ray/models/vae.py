"""M convolutional VAEs fused into one module with grouped convolutions.

A PBT member trains M VAEs that always see the same minibatch and share their hyperparameters
(DESIGN.md principle 1). `VAEEnsemble` stacks them channel-wise: every layer holds the M models'
channels side by side and uses `groups=M`, so a group only ever reads its own model's channels.
One forward and one backward run all M models; BatchNorm over M*channels is per-model BatchNorm,
because BatchNorm normalises each channel on its own.

Layouts. Parameters of model m are the m-th of M equal chunks along dim 0 of every fused
parameter and buffer (Conv2d weight (M*out, in, k, k); ConvTranspose2d weight (M*in, out, k, k);
biases and BatchNorm vectors (M*c,)). The module names of a fused ensemble and of a single `VAE`
are the same, so `split_ensemble` and `fuse_models` are chunk / concatenate over state dicts.

Architectures (`arch`):

* ``"authors"`` (default): the rPU-VAE authors' beta-TCVAE (original-code-spec §1.1). Encoder
  conv 32-32-64-64 (k4 s2 p1), conv 512 (k4), 1x1 conv to 2*z; decoder 1x1 transposed conv to
  512, transposed conv to 64 at 4x4 (k4), then transposed convs 64-32-32-C (k4 s2 p1).
  BatchNorm + ReLU after every layer but the last of each network. 1,298,581 parameters per
  model for 64x64x1, 1,300,631 for 64x64x3.
* ``"dlib"``: disentanglement_lib's `conv_encoder` / `deconv_decoder` (the beta-VAE paper's
  chairs network). Encoder conv 32 (k4), 32 (k4), 64 (k2), 64 (k2), all stride 2 and ReLU, dense
  256 + ReLU, dense heads to z means and z log-scales; decoder dense 256 + ReLU, dense 1024 + ReLU
  reshaped to 64x4x4, transposed convs 64-32-32-C (k4 s2). No BatchNorm. 690,517 parameters for
  64x64x1. Dense layers are convolutions covering their whole input map (the same functions, and
  PyTorch initialises them like `nn.Linear`); the two heads are one 1x1 conv with the authors'
  interleaved output, so both architectures share one parameterisation: the encoder returns
  log sigma, not disentanglement_lib's log variance.

Image sizes. Both encoders reduce the image with stride-2 stages to a 4x4 map, so a size
S = 4 * 2**n (a power of two, at least 8) takes n stages. The stage list above is the 64x64 one
(n = 4); other sizes keep its low-resolution end, which feeds the 4x4 head: 32x32 drops the first
stage (authors: conv 32-64-64; dlib: 32(k4)-64(k2)-64(k2)), 128x128 repeats the first stage in
front (authors: 32-32-32-64-64). The decoder mirrors the encoder's stage channels.

Encoder outputs are interleaved per model as in the authors' code: output channel 2d of a model is
the mean of latent d, channel 2d+1 its log standard deviation, so single-model weights map 1:1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "VAE",
    "Architecture",
    "Stage",
    "VAEEnsemble",
    "VAEOutput",
    "fuse_models",
    "split_ensemble",
]


@dataclass(frozen=True)
class Stage:
    """One stride-2 convolution of an encoder."""

    channels: int
    kernel: int
    padding: int


@dataclass(frozen=True)
class Architecture:
    """Layer sizes of an encoder/decoder pair.

    Attributes:
      stages: the stride-2 encoder stages for 64x64 images, from high to low resolution.
      hidden: channels of the layer between the 4x4 map and the latent code (both networks).
      batchnorm: BatchNorm after every layer but the last of each network.
      dense_decoder_head: the decoder maps z to the 4x4 map with two dense layers, the second's
        16*c units reshaped to c channels of 4x4 (disentanglement_lib); otherwise with a 1x1 and
        a 4x4 transposed convolution (the authors).
    """

    stages: tuple[Stage, ...]
    hidden: int
    batchnorm: bool
    dense_decoder_head: bool

    def stages_for(self, image_size: int) -> tuple[Stage, ...]:
        """Stride-2 stages that reduce `image_size` to 4x4 (see the module docstring)."""
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image size must be a power of two >= 8, got {image_size}")
        n = image_size.bit_length() - 3  # image_size == 4 * 2**n
        if n <= len(self.stages):
            return self.stages[len(self.stages) - n :]
        return (self.stages[0],) * (n - len(self.stages)) + self.stages


ARCHITECTURES: dict[str, Architecture] = {
    "authors": Architecture(
        stages=(Stage(32, 4, 1), Stage(32, 4, 1), Stage(64, 4, 1), Stage(64, 4, 1)),
        hidden=512,
        batchnorm=True,
        dense_decoder_head=False,
    ),
    "dlib": Architecture(
        stages=(Stage(32, 4, 1), Stage(32, 4, 1), Stage(64, 2, 0), Stage(64, 2, 0)),
        hidden=256,
        batchnorm=False,
        dense_decoder_head=True,
    ),
}


class VAEOutput(NamedTuple):
    """Outputs of the M models for one batch of B images of shape (C, H, W).

    Attributes:
      mu: (M, B, z) posterior means.
      logsigma: (M, B, z) posterior log standard deviations.
      z: (M, B, z) reparameterised samples mu + exp(logsigma) * eps.
      logits: (M, B, C, H, W) Bernoulli logits of the reconstructions.
    """

    mu: Tensor
    logsigma: Tensor
    z: Tensor
    logits: Tensor


def _layer(conv: nn.Conv2d | nn.ConvTranspose2d, batchnorm: bool) -> list[nn.Module]:
    """A hidden layer: convolution, optional BatchNorm, ReLU."""
    norm = [nn.BatchNorm2d(conv.out_channels)] if batchnorm else []
    return [conv, *norm, nn.ReLU(inplace=True)]


def _encoder(arch: Architecture, shape: tuple[int, int, int], z_dim: int, m: int) -> nn.Sequential:
    """Fused encoder of M models: (B, C, H, W) -> (B, M*2z, 1, 1)."""
    layers: list[nn.Module] = []
    # The first convolution reads the input image that all M models share: a dense conv from C to
    # M*c channels is the same function (and weight layout) as repeating the input M times with
    # groups=M, without materialising the repeat.
    c_in, groups = shape[0], 1
    for stage in arch.stages_for(shape[1]):
        c_out = m * stage.channels
        conv = nn.Conv2d(c_in, c_out, stage.kernel, 2, stage.padding, groups=groups)
        layers += _layer(conv, arch.batchnorm)
        c_in, groups = c_out, m
    layers += _layer(nn.Conv2d(c_in, m * arch.hidden, 4, groups=m), arch.batchnorm)
    layers.append(nn.Conv2d(m * arch.hidden, m * 2 * z_dim, 1, groups=m))
    return nn.Sequential(*layers)


def _decoder(arch: Architecture, shape: tuple[int, int, int], z_dim: int, m: int) -> nn.Sequential:
    """Fused decoder of M models: (B, M*z, 1, 1) -> (B, M*C, H, W) logits."""
    channels = [m * stage.channels for stage in arch.stages_for(shape[1])]
    hidden, bn = m * arch.hidden, arch.batchnorm
    if arch.dense_decoder_head:
        # Dense z -> hidden -> 16*c units (1x1 convs), reshaped to the 4x4 map of c channels.
        layers = _layer(nn.Conv2d(m * z_dim, hidden, 1, groups=m), bn)
        layers += _layer(nn.Conv2d(hidden, 16 * channels[-1], 1, groups=m), bn)
        layers += [nn.Flatten(), nn.Unflatten(1, (channels[-1], 4, 4))]
    else:
        layers = _layer(nn.ConvTranspose2d(m * z_dim, hidden, 1, groups=m), bn)
        layers += _layer(nn.ConvTranspose2d(hidden, channels[-1], 4, groups=m), bn)  # to 4x4
    # Mirror of the encoder stages: channels[i] -> channels[i-1], each doubling the size.
    for c_in, c_out in zip(channels[:0:-1], channels[-2::-1], strict=True):
        layers += _layer(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, groups=m), bn)
    layers.append(nn.ConvTranspose2d(channels[0], m * shape[0], 4, 2, 1, groups=m))
    return nn.Sequential(*layers)


class VAEEnsemble(nn.Module):
    """M independently initialised VAEs computed by one fused module.

    Each model is a diagonal-Gaussian encoder q(z|x) and a Bernoulli decoder p(x|z) with prior
    N(0, I); initialisation is PyTorch's default per layer, which for a grouped layer draws every
    model's weights from the same distribution as a single model's.

    Args:
      num_models: M.
      image_shape: (C, H, W) with H == W a power of two >= 8 (32, 64 and 128 are tested).
      z_dim: latent dimensions per model.
      arch: a key of `ARCHITECTURES` ("authors" or "dlib").

    Shape:
      - input x: (B, C, H, W) floats in [0, 1], the same images for all models.
      - output: `VAEOutput` with tensors (M, B, z) and logits (M, B, C, H, W).
    """

    def __init__(
        self,
        num_models: int = 5,
        image_shape: Sequence[int] = (1, 64, 64),
        z_dim: int = 10,
        arch: str = "authors",
    ) -> None:
        super().__init__()
        channels, height, width = (int(s) for s in image_shape)
        if height != width:
            raise ValueError(f"images must be square, got {height}x{width}")
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
        if num_models < 1 or z_dim < 1 or channels < 1:
            raise ValueError("num_models, z_dim and the channel count must be positive")
        self.num_models = num_models
        self.image_shape = (channels, height, width)
        self.z_dim = z_dim
        self.arch = arch
        spec = ARCHITECTURES[arch]
        self.encoder = _encoder(spec, self.image_shape, z_dim, num_models)
        self.decoder = _decoder(spec, self.image_shape, z_dim, num_models)

    @property
    def config(self) -> dict[str, object]:
        """Constructor arguments of one member model: `VAE(**config)` holds one of the M."""
        return {"image_shape": self.image_shape, "z_dim": self.z_dim, "arch": self.arch}

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters of every model.

        Args:
          x: (B, C, H, W) images in [0, 1].

        Returns:
          mu, logsigma: (M, B, z) each.
        """
        h = self.encoder(x).view(x.shape[0], self.num_models, self.z_dim, 2)
        return h[..., 0].transpose(0, 1), h[..., 1].transpose(0, 1)

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli logits of every model's reconstruction.

        Args:
          z: (M, B, z) latent codes, z[m] decoded by model m.

        Returns:
          (M, B, C, H, W) logits.
        """
        m, b, _ = z.shape
        logits = self.decoder(z.transpose(0, 1).reshape(b, m * self.z_dim, 1, 1))
        return logits.view(b, m, *self.image_shape).transpose(0, 1)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> VAEOutput:
        """Encodes, samples z = mu + exp(logsigma) * eps and decodes.

        Args:
          x: (B, C, H, W) images in [0, 1].
          eps: (M, B, z) standard normal noise; drawn from the global RNG when None.
        """
        mu, logsigma = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + logsigma.exp() * eps
        return VAEOutput(mu, logsigma, z, self.decode(z))


class VAE(VAEEnsemble):
    """One VAE with plain (ungrouped) layers: the reference model and the export format.

    Its inputs and outputs have the shapes of a `VAEEnsemble` with M = 1, so the losses apply to it
    unchanged; its state dict is one chunk of a fused ensemble's (see `split_ensemble`).
    """

    def __init__(
        self, image_shape: Sequence[int] = (1, 64, 64), z_dim: int = 10, arch: str = "authors"
    ) -> None:
        super().__init__(1, image_shape, z_dim, arch)


def split_ensemble(ensemble: VAEEnsemble) -> list[dict[str, Tensor]]:
    """The M single-model state dicts of a fused ensemble.

    Each one loads into `VAE(**ensemble.config)`. Tensors are copies. BatchNorm's
    `num_batches_tracked` counter is shared by the M models and copied into each.
    """
    m = ensemble.num_models
    parts: list[dict[str, Tensor]] = [{} for _ in range(m)]
    for name, tensor in ensemble.state_dict().items():
        chunks = tensor.chunk(m) if tensor.dim() else (tensor,) * m
        for part, chunk in zip(parts, chunks, strict=True):
            part[name] = chunk.clone()
    return parts


def fuse_models(models: Sequence[VAEEnsemble]) -> VAEEnsemble:
    """One fused ensemble holding `models` in order (each a `VAE` or an ensemble of one).

    The ensemble is created on the first model's device. BatchNorm's `num_batches_tracked` is taken
    from the first model (it only matters for BatchNorm with momentum=None, unused here).
    """
    if not models:
        raise ValueError("need at least one model")
    config = models[0].config
    if any(model.num_models != 1 or model.config != config for model in models):
        raise ValueError("fuse_models needs single models with identical configurations")
    states = [model.state_dict() for model in models]
    fused = {
        name: torch.cat([state[name] for state in states]) if tensor.dim() else tensor.clone()
        for name, tensor in states[0].items()
    }
    ensemble = VAEEnsemble(len(models), **config).to(next(iter(fused.values())).device)
    ensemble.load_state_dict(fused)
    return ensemble
