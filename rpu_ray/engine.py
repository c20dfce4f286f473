"""One PBT member without Ray: M fused VAEs, one Adam, training on a device-resident image set.

A `Member` owns everything one population member needs between generations: the fused
`VAEEnsemble`, one Adam over all its parameters (Adam is elementwise, so this equals M separate
Adams), the objective with any state of its own (AnnealedVAE's step counter, FactorVAE's
discriminator and its optimiser), its hyperparameters (lr, batch size and the objective's own,
e.g. beta) and a `torch.Generator` on the device that draws the data order, the
reparameterisation noise and the objective's random numbers (FactorVAE's shuffling).

Data never leaves the device: `train` takes the current (sub)set as a uint8 tensor already on the
member's device and converts one batch at a time to float (DESIGN.md principle 2).

Image budget of one generation (original-code-spec §2.3), with the batch size clamped to [2, N]:
shuffled passes over the N images, each a fresh permutation from the member's generator, cut into
consecutive batches; a pass ends with its partial batch, or drops its last image when that would
be a batch of one (the authors' drop_last); the last batch of the generation is truncated to hit
the budget, which ends one image short when only one would remain (the authors reduce the budget
by one then). Size-1 batches never occur: BatchNorm cannot train on them and the minibatch TC
estimator degenerates; this holds for every architecture.

Few labels (Locatello et al. 2020, `rpu_ray.models.supervised`): a member built with
`supervision` (the regulariser R_s) and trained with a `LabelledSet` adds gamma_sup * R_s to every
model's loss. Each step then also draws a labelled minibatch from the member's generator, after
the step's noise: min(unlabelled batch size, L) of the L labelled images, without replacement. Its
posterior means come from a second encoder pass in training mode, so BatchNorm normalises the
labelled batch with its own statistics, as disentanglement_lib's `BaseS2VAE` encodes the two
batches separately. (disentanglement_lib cycles through the labelled set in one fixed order and
pads a batch larger than L with repeats; drawing a fresh subset per step needs no position to be
saved between generations.) Without a `LabelledSet`, nothing of this happens: the member draws
the same random numbers and computes the same loss as one built without `supervision`.

Divergence: a NaN or Inf loss marks the generation as diverged and ends it (the weights are then
not finite either; PBT replaces the member). Losses are accumulated on the device and checked
every `nan_check_every` steps, so the training loop does not synchronise with the device on every
step; a diverged generation stops within that many steps.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rpu_ray.models import LossOutput, VAEEnsemble, VAELoss, make_loss
from rpu_ray.models.supervised import SupervisedRegulariser

__all__ = ["LabelledSet", "Member", "step_loss"]


@dataclass(frozen=True, eq=False)
class LabelledSet:
    """The few labelled images of semi-supervised training, on the member's device.

    Kept apart from the unlabelled training set (as disentanglement_lib's labelled data set is):
    the unlabelled passes, the budget and the TC estimator's N stay those of `images`.

    Attributes:
      images: uint8 (L, C, H, W), L >= 2 (BatchNorm needs two images per batch).
      labels: integer (L, F) factor class indices; the first F latents are supervised.
      factor_sizes: (F,) number of classes of every factor (labels are normalised by them).
    """

    images: Tensor
    labels: Tensor
    factor_sizes: Tensor

    def __post_init__(self) -> None:
        count = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or count < 2:
            raise ValueError(f"labelled images must be uint8 (L, C, H, W) with L >= 2, got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if (self.labels.dim() != 2 or self.labels.shape[0] != count
                or self.labels.dtype.is_floating_point):
            raise ValueError(f"labels must be integer (L, F) for L = {count} images, got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        if self.factor_sizes.shape != (self.labels.shape[1],) or bool(
                (self.factor_sizes < 1).any()):
            raise ValueError(f"factor_sizes must be {self.labels.shape[1]} positive counts, "
                             f"got {self.factor_sizes.tolist()}")
        if self.labels.numel() and bool(
                ((self.labels < 0) | (self.labels >= self.factor_sizes)).any()):
            raise ValueError("labels must be class indices 0..factor_size-1")

    @classmethod
    def from_arrays(cls, images: np.ndarray | Tensor, labels: np.ndarray | Tensor,
                    factor_sizes: Sequence[int], device: str | torch.device = "cpu"
                    ) -> LabelledSet:
        """A labelled set on `device` from host arrays (uint8 images, integer labels)."""
        return cls(torch.as_tensor(np.ascontiguousarray(images)).to(device),
                   torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device),
                   torch.as_tensor(list(factor_sizes), dtype=torch.float32).to(device))

    def __len__(self) -> int:
        return self.images.shape[0]


def step_loss(
    model: VAEEnsemble,
    loss_fn: VAELoss,
    x: Tensor,
    eps: Tensor,
    hparams: Mapping[str, float],
    dataset_size: int,
    *,
    supervised: SupervisedRegulariser | None = None,
    x_labelled: Tensor | None = None,
    labels: Tensor | None = None,
    factor_sizes: Tensor | None = None,
    bf16: bool = False,
) -> LossOutput:
    """The per-model loss (M,) of one step, before backward: what `Member.train_step` minimises.

    The objective's loss on the batch `x` (images in [0, 1], noise `eps` (M, B, z)); with a
    labelled batch (`x_labelled` (L, C, H, W) in [0, 1], `labels` (L, F) float class indices,
    `factor_sizes` (F,)) plus hparams["gamma_sup"] * `supervised`(posterior means of
    `x_labelled`), Locatello et al.'s Eq. 2, logged as the term "supervised". Kept as a function of
    the model so that a fused ensemble can be checked against its models one by one.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x, eps)
        mu_labelled = None if x_labelled is None else model.encode(x_labelled)[0]
    out = out._make(t.float() for t in out)
    result = loss_fn(x, out, hparams, dataset_size)
    if mu_labelled is None:
        return result
    if supervised is None or labels is None or factor_sizes is None:
        raise ValueError("a labelled batch needs the regulariser, its labels and factor sizes")
    penalty = supervised(mu_labelled.float(), labels, factor_sizes)
    return LossOutput(result.loss + hparams["gamma_sup"] * penalty,
                      {**result.terms, "supervised": penalty.detach()})


class Member:
    """M fused VAEs trained together with shared hyperparameters.

    Args:
      hyperparameters: "lr", "batch_size" and all of the objective's hyperparameters (e.g.
        "beta"; fixed ones too: `VAELoss.fixed_hyperparameters` resolves their defaults).
      num_models: M, the VAEs of the member.
      image_shape: (C, H, W) of the training images.
      z_dim: latent dimensions per VAE.
      arch: "authors" or "dlib" (see `rpu_ray.models.vae`).
      loss: a registered objective (a key of `rpu_ray.models.LOSSES`, e.g. "betatcvae").
      seed: determines the initial weights (the objective's too) and the member's generator (it
        is not part of the state: a loaded state brings its generator along).
      device: where the model, the optimiser state and the training images live.
      bf16: bfloat16 autocast for the model's forward (the objective is always float32).
      channels_last: channels-last memory format for the model and the batches (for CUDA).
      nan_check_every: optimiser steps between checks for a non-finite loss.
      supervision: a supervised regulariser (`rpu_ray.models.supervised.SUPERVISED_LOSSES`, e.g.
        "xent") for semi-supervised training with a `LabelledSet`; it adds the hyperparameter
        "gamma_sup" (its weight), its own parameters if any (the "l2" scale, trained by the
        member's Adam) and an entry "supervision" to `config`. None: an unsupervised member,
        exactly as before.
    """

    def __init__(
        self,
        hyperparameters: Mapping[str, float],
        *,
        num_models: int = 5,
        image_shape: Sequence[int] = (1, 64, 64),
        z_dim: int = 10,
        arch: str = "authors",
        loss: str = "betatcvae",
        seed: int = 0,
        device: str | torch.device = "cpu",
        bf16: bool = False,
        channels_last: bool = False,
        nan_check_every: int = 100,
        supervision: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        init_seed, data_seed = (
            int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)
        )
        # Initialise on the CPU under a private RNG: the same weights on every device, and the
        # global RNG of the caller is left alone. The objective comes second, so that weights of
        # its own (FactorVAE's discriminator) leave the VAEs' initial weights unchanged.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = VAEEnsemble(num_models, image_shape, z_dim, arch)
            loss_fn = make_loss(loss, num_models, z_dim)
            supervised = (None if supervision is None
                          else SupervisedRegulariser(num_models, supervision))
        self._hparam_names = ("lr", "batch_size", *loss_fn.hyperparameters,
                              *(() if supervised is None else ("gamma_sup",)))
        missing = set(self._hparam_names) - set(hyperparameters)
        if missing:
            raise ValueError(f"missing hyperparameters {sorted(missing)} for loss {loss!r}")
        self.loss_fn = loss_fn.to(self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.supervised = None if supervised is None else supervised.to(self.device)
        parameters = list(self.model.parameters())
        if self.supervised is not None:
            parameters += list(self.supervised.parameters())
        # The fused (single-kernel) Adam implementation on CUDA: the same update, fewer launches.
        self.optimizer = torch.optim.Adam(
            parameters,
            lr=float(hyperparameters["lr"]),
            fused=self.device.type == "cuda",
        )
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(data_seed)
        self.loss_fn.generator = self.generator
        self.bf16 = bf16
        self.nan_check_every = nan_check_every
        self.config: dict[str, Any] = {
            "num_models": num_models,
            "image_shape": list(self.model.image_shape),
            "z_dim": z_dim,
            "arch": arch,
            "loss": loss,
        }
        if supervision is not None:
            self.config["supervision"] = supervision
        self.total_steps = 0
        self.total_images = 0
        self._hparams: dict[str, float] = {}
        self.set_hyperparameters(**hyperparameters)

    @property
    def num_models(self) -> int:
        return self.model.num_models

    @property
    def hyperparameters(self) -> dict[str, float]:
        """Current hyperparameters (a copy); batch_size is an int."""
        return dict(self._hparams)

    def set_hyperparameters(self, **values: float) -> None:
        """Sets any of lr, batch_size and the objective's hyperparameters (e.g. beta).

        Meant to be applied after `load_state_dict` (PBT explore): lr goes into the optimiser's
        param groups, the others take effect at the next `train`.
        """
        unknown = set(values) - set(self._hparam_names)
        if unknown:
            known = ", ".join(self._hparam_names)
            raise ValueError(f"unknown hyperparameters {sorted(unknown)}; known: {known}")
        for name, value in values.items():
            if name == "batch_size":
                if int(value) != value or value < 1:
                    raise ValueError(f"batch_size must be a positive integer, got {value}")
                self._hparams[name] = int(value)
            else:
                self._hparams[name] = float(value)
        if "lr" in values:
            for group in self.optimizer.param_groups:
                group["lr"] = self._hparams["lr"]

    def batch_size_for(self, num_images: int) -> int:
        """The batch size `train` uses on `num_images` images: the hyperparameter clamped to
        [2, num_images] (BatchNorm and the TC estimator need two images)."""
        return max(2, min(int(self._hparams["batch_size"]), num_images))

    def train_step(self, images: Tensor, index: Tensor,
                   labelled: LabelledSet | None = None) -> LossOutput:
        """One optimiser step of all M models on one batch: gather, forward, backward, Adam.

        Kept as one method so that it can later be captured whole in a CUDA graph.

        Args:
          images: (N, C, H, W) uint8 training set on the device; N enters the TC estimator.
          index: (B,) indices of the batch's images.
          labelled: draw a labelled batch of min(B, L) images too and add the supervised term
            (see the module docstring); needs a member built with `supervision`.

        Returns:
          The detached per-model loss (M,) and logging terms.
        """
        x = images[index].to(memory_format=self.memory_format).float().div_(255)
        eps = torch.randn(
            (self.num_models, x.shape[0], self.model.z_dim),
            generator=self.generator,
            device=self.device,
        )
        supervision: dict[str, Any] = {}
        if labelled is not None:
            pick = torch.randperm(len(labelled), generator=self.generator,
                                  device=self.device)[: min(x.shape[0], len(labelled))]
            supervision = {
                "supervised": self.supervised,
                "x_labelled": labelled.images[pick].to(memory_format=self.memory_format)
                .float().div_(255),
                "labels": labelled.labels[pick].float(),
                "factor_sizes": labelled.factor_sizes,
            }
        result = step_loss(self.model, self.loss_fn, x, eps, self._hparams, images.shape[0],
                           bf16=self.bf16, **supervision)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.sum().backward()
        self.optimizer.step()
        self.loss_fn.after_step()
        return LossOutput(result.loss.detach(), result.terms)

    def train(self, images: Tensor, budget_images: int,
              labelled: LabelledSet | None = None) -> dict[str, Any]:
        """Trains one generation: `budget_images` images (see the module docstring).

        Args:
          images: (N, C, H, W) uint8 tensor on the member's device, values 0..255, N >= 2.
          budget_images: images to train on (each seen by all M models), at least 2.
          labelled: the few labelled images (semi-supervised training, Locatello et al. 2020),
            on the member's device; needs a member built with `supervision`. The budget counts
            the unlabelled images only; the result gets the term "supervised" (sum of R_s over
            each labelled batch, image-weighted like the others).

        Returns:
          A dict with per-model lists (length M) of the image-weighted mean "loss" and of every
          logging term of the objective; "images_seen", "steps", "batch_size" (the one used),
          "seconds", "model_images_per_s" (M * images_seen / seconds) and "diverged".
        """
        num_images = self._check_images(images)
        if images.device != self.device:
            raise ValueError(f"images are on {images.device}, the member on {self.device}")
        if num_images < 2:
            raise ValueError(f"need at least 2 images to train on, got {num_images}")
        if budget_images < 2:
            raise ValueError(f"budget_images must be at least 2, got {budget_images}")
        if labelled is not None:
            self._check_labelled(labelled)
        batch_size = self.batch_size_for(num_images)
        self.model.train()
        start = time.perf_counter()
        names: list[str] = []
        sums: Tensor | None = None  # (1 + terms, M) image-weighted sums, kept on the device
        seen = steps = 0
        diverged = False
        for index in self._batches(num_images, batch_size, budget_images):
            result = (self.train_step(images, index) if labelled is None
                      else self.train_step(images, index, labelled))
            stacked = torch.stack([result.loss, *result.terms.values()])
            if sums is None:
                names, sums = ["loss", *result.terms], torch.zeros_like(stacked)
            sums.add_(stacked, alpha=len(index))
            seen += len(index)
            steps += 1
            # Non-finite values stay non-finite in the running sums: checking them is enough.
            if steps % self.nan_check_every == 0 and not torch.isfinite(sums[0]).all():
                diverged = True
                break
        assert sums is not None  # budget_images >= 2 and N >= 2 make at least one step
        means = (sums / seen).tolist()  # synchronises with the device
        seconds = time.perf_counter() - start
        # The last step's update can make weights non-finite behind a finite loss (which was
        # computed before it): such a member would score finitely and be cloned.
        diverged = diverged or not all(np.isfinite(means[0])) or not self._state_is_finite()
        self.total_steps += steps
        self.total_images += seen
        return {
            **dict(zip(names, means, strict=True)),
            "images_seen": seen,
            "steps": steps,
            "batch_size": batch_size,
            "seconds": seconds,
            "model_images_per_s": self.num_models * seen / seconds,
            "diverged": diverged,
        }

    def _own_optimizer_layout(self) -> None:
        """Adam as this member runs it, whatever the loaded state was saved from.

        Optimizer.load_state_dict takes the saved implementation flags (fused Adam on CUDA) and
        keeps moments whose device and dtype match in their saved memory layout (channels-last
        on a GPU member). Fused kernels pair moments with weights by memory order, so a CPU
        member restored from a GPU checkpoint would apply its updates to the wrong weights.
        """
        for group in self.optimizer.param_groups:
            for key in ("fused", "foreach"):
                group[key] = self.optimizer.defaults[key]
            for param in group["params"]:
                moments = self.optimizer.state.get(param, {})
                for name, value in moments.items():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        moments[name] = torch.empty_like(param).copy_(value)

    def _state_is_finite(self) -> bool:
        """Whether every parameter and buffer (BatchNorm statistics) is finite, the loss's own
        (FactorVAE's discriminator, trained after the last loss) and the supervised head's
        included; one sync."""
        modules = [self.model, self.loss_fn, *([] if self.supervised is None else
                                               [self.supervised])]
        tensors = [t for module in modules for t in (*module.parameters(), *module.buffers())
                   if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _batches(self, num_images: int, batch_size: int, budget: int) -> Iterator[Tensor]:
        """Index tensors of the batches of one generation (see the module docstring)."""
        generator, device = self.generator, self.device
        permutation = torch.empty(0, dtype=torch.long, device=device)
        position = num_images  # start with a fresh pass
        left = budget
        while left > 1:
            if num_images - position < 2:
                permutation = torch.randperm(num_images, generator=generator, device=device)
                position = 0
            size = min(batch_size, num_images - position, left)
            yield permutation[position : position + size]
            position += size
            left -= size

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
        """Posterior means and log standard deviations of every model, without sampling.

        Runs in eval mode (BatchNorm running statistics) and float32, on the member's device.

        Args:
          images: (N, C, H, W) uint8 images (any device; batches are moved to the member's).
          batch_size: images per forward pass.

        Returns:
          mu, logsigma: (M, N, z) each, on the member's device.
        """
        self._check_images(images)
        was_training = self.model.training
        self.model.eval()
        try:
            parts = [
                self.model.encode(
                    chunk.to(self.device, memory_format=self.memory_format).float().div_(255)
                )
                for chunk in images.split(batch_size)
            ]
        finally:
            self.model.train(was_training)
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training: weights, Adam state, the objective's state,
        hyperparameters, generator state and counters, as tensors and plain containers
        (loadable with `torch.load(..., weights_only=True)`). Tensors are the live ones, as in
        `nn.Module.state_dict`: save or copy them to keep a snapshot."""
        return {
            "config": dict(self.config),
            "hyperparameters": self.hyperparameters,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "generator": self.generator.get_state(),
            "total_steps": self.total_steps,
            "total_images": self.total_images,
            # Only with supervision: an unsupervised member's state is what it always was.
            **({} if self.supervised is None else {"supervised": self.supervised.state_dict()}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a `state_dict` from a member of the same configuration (any seed).

        The member continues exactly as the saved one would (weights, Adam moments, generator);
        call `set_hyperparameters` afterwards to change hyperparameters (PBT explore).
        """
        if dict(state["config"]) != self.config:
            raise ValueError(f"state of a different member configuration: {state['config']}")
        self.model.load_state_dict(state["model"])  # copies into this member's parameters
        # torch's Optimizer.load_state_dict keeps the given moment tensors when their device
        # and dtype already match: two clones loaded from one in-memory donor state would
        # share (and both update) one set of Adam moments and step counters.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._own_optimizer_layout()
        self.loss_fn.load_state_dict(state["loss"])
        if self.supervised is not None:
            self.supervised.load_state_dict(state["supervised"])
        generator_state = state["generator"].cpu()
        if generator_state.numel() == self.generator.get_state().numel():
            self.generator.set_state(generator_state)
        else:
            # Saved on another kind of device (a CUDA generator's state is 16 bytes, a CPU
            # one's 5,056), e.g. a trial restored on a node without a GPU: continue with a
            # stream derived from that state, so the restore stays deterministic.
            digest = hashlib.sha256(generator_state.numpy().tobytes()).digest()
            self.generator.manual_seed(int.from_bytes(digest[:8], "little"))
        self.total_steps = int(state["total_steps"])
        self.total_images = int(state["total_images"])
        self._hparams = {}
        self.set_hyperparameters(**state["hyperparameters"])

    def _check_labelled(self, labelled: LabelledSet) -> None:
        """Validates a labelled set against this member (device, image shape, latents)."""
        if self.supervised is None:
            raise ValueError("training with labelled images needs a member built with "
                             "`supervision` (e.g. 'xent')")
        self._check_images(labelled.images)
        tensors = (labelled.images, labelled.labels, labelled.factor_sizes)
        if any(t.device != self.device for t in tensors):
            raise ValueError(f"the labelled set must be on the member's device {self.device}")
        factors = labelled.labels.shape[1]
        if self.supervised.kind != "cov" and factors > self.model.z_dim:
            raise ValueError(f"{factors} labelled factors need at least as many latents, the "
                             f"member has {self.model.z_dim}")

    def _check_images(self, images: Tensor) -> int:
        """Validates a uint8 (N, C, H, W) image tensor and returns N."""
        shape = (images.shape[0], *self.model.image_shape)
        if images.dtype != torch.uint8 or images.shape != shape:
            raise ValueError(
                f"expected uint8 images of shape (N, C, H, W) = {shape}, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        return images.shape[0]
