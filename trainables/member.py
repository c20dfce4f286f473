"""The Ray Tune trainable of one PBT member: a thin adapter around `rpu_ray.engine.Member`.

One `step()` is one generation: train the member on its image budget, then score it (UDR of
its VAEs, or MIG/DCI on labels). Everything else is in the core: the engine trains, the
evaluation module scores, the checkpoint module writes files. Tune passes the data once per
node through the object store (`tune.with_parameters`): the trainable keeps a read-only,
zero-copy view and moves the current subset to its device once (DESIGN principle 2).

Config keys (Tune's per-trial config, perturbed by the scheduler): `member` (index in the
population), `lr`, `batch_size`, `beta` for the objectives that tune it
(`rpu_ray.population.tuned_hyperparameters`), and `clone_seed` once a member is a clone.
Static settings (`with_parameters`): `settings` =
{"experiment": config dict, "mode": "udr" | "mig" | "dci" | "leafmig", "run": name of this
PBT run}, `images` uint8 (N, C, H, W) (or an object-store reference to it), optional `subset`
(positions into `images`), `factors` (for mig/dci) and `label_chains` (for leafmig: the
surrogate-label chains of the leaf-runs, positions into the full `images`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from rpu_ray.checkpoint import (
    MEMBER_RESULT_FILE,
    MEMBER_STATE_FILE,
    load_checkpoint,
    save_checkpoint,
)
from rpu_ray.config import ExperimentConfig, ResourcesConfig, from_dict
from rpu_ray.evaluation import LabelChain
from rpu_ray.population import build_member, member_hyperparameters, score_member

FAULT_ENV = "RPU_RAY_INJECT_FAULT"


def inject_fault() -> None:
    """Fault injection for tests of crash recovery (never active unless asked for).

    If the environment variable RPU_RAY_INJECT_FAULT names an existing file, the first trial
    step (of a trial past its first generation) to claim that file by renaming it fails: it
    raises if the file says "raise", or its process dies with SIGKILL if it says "kill".
    """
    path = os.environ.get(FAULT_ENV)
    if not path:
        return
    claimed = f"{path}.claimed-{os.getpid()}"
    try:
        os.rename(path, claimed)  # atomic: exactly one trial claims the fault
    except FileNotFoundError:
        return
    if Path(claimed).read_text().strip() == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"fault injected through {FAULT_ENV}")


def choose_device(preference: str, assigned_gpus: Sequence[int | str]) -> torch.device:
    """`auto`: the GPU Ray assigned to this trial (`assigned_gpus`, from `ray.get_gpu_ids()`)
    if CUDA sees it, else the CPU. Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial
    that asked for no GPU: going by `torch.cuda.is_available()` alone would put every such
    trial of a GPU node on GPU 0."""
    if preference == "cpu" or (preference == "auto" and not (
            assigned_gpus and torch.cuda.is_available())):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no GPU is visible to this trial")
    return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU


def resident_memory_mb() -> float | None:
    """This process's resident memory (Linux `/proc`; None elsewhere), for leak monitoring."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kilobytes = next((int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:")), None)
    return None if kilobytes is None else kilobytes / 1024


def _finite_or_none(value: float) -> float | None:
    """A score for JSON: None where it is NaN or infinite (a diverged member's -inf)."""
    return float(value) if math.isfinite(value) else None


def gpu_memory_share(resources: ResourcesConfig) -> float:
    """The fraction of its GPU's memory a trial may allocate: `gpu_memory_fraction` if set,
    else its share of the GPU (k trials at `gpus_per_trial` 1/k never exceed the GPU together;
    memory is not isolated by Ray's fractional GPUs)."""
    return resources.gpu_memory_fraction or min(1.0, resources.gpus_per_trial or 1.0)


class MemberTrainable(tune.Trainable):
    """One population member (M fused VAEs) as a class-based Tune trainable."""

    def setup(self, config: dict[str, Any], settings: dict[str, Any] | None = None,
              images: np.ndarray | ray.ObjectRef | None = None,
              subset: np.ndarray | None = None, factors: np.ndarray | None = None,
              label_chains: list[LabelChain] | None = None) -> None:
        if settings is None or images is None:
            raise ValueError("MemberTrainable needs `settings` and `images` "
                             "(pass them with tune.with_parameters)")
        if isinstance(images, ray.ObjectRef):  # the driver's one copy in the object store
            images = ray.get(images)
        self.label_chains = label_chains
        self.experiment: ExperimentConfig = from_dict(settings["experiment"])
        self.mode: str = settings["mode"]
        self.run_name: str = settings["run"]
        self.device = choose_device(self.experiment.train.device, ray.get_gpu_ids())
        self._configure_device()
        self.images = self._device_images(images, subset)
        self.factors = None if factors is None else (
            np.asarray(factors) if subset is None else np.asarray(factors)[subset])
        if self.mode in ("mig", "dci") and self.factors is None:
            raise ValueError(f"mode {self.mode!r} scores on labels, but no factors were given")
        if self.mode == "leafmig" and (not label_chains or subset is not None):
            raise ValueError("mode 'leafmig' needs label_chains and the full data set")
        self._build(config)

    def __repr__(self) -> str:
        # Ray shows an actor's repr in the dashboard and in its log prefixes: say which member
        # of which PBT run (metaEpoch) this process trains.
        run, index = getattr(self, "run_name", None), getattr(self, "member_index", None)
        return "MemberTrainable" if run is None else f"member {index} of pbt:{run}"

    # ------------------------------------------------------------------ setup helpers

    def _configure_device(self) -> None:
        resources = self.experiment.resources
        if self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(gpu_memory_share(resources), self.device)
        else:
            torch.set_num_threads(max(1, int(resources.cpus_per_trial)))

    def _device_images(self, images: np.ndarray, subset: np.ndarray | None) -> torch.Tensor:
        """The training images on the device, as one uint8 tensor."""
        if subset is not None:
            images = images[np.asarray(subset)]
        with warnings.catch_warnings():
            # Object-store arrays are read-only; the engine never writes to its images.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(images)
        return tensor.to(self.device)

    def _build(self, config: dict[str, Any]) -> None:
        """A fresh member for this trial's config (also on actor reuse: nothing carries over)."""
        self.member_index = int(config["member"])
        self.member = build_member(self.experiment, config, self.member_index, self.run_name,
                                   tuple(self.images.shape[1:]), self.device)
        self.lineage: list[int] = [self.member_index]
        self.state_result: dict[str, Any] | None = None  # no generation trained yet

    # ------------------------------------------------------------------ Tune API

    def step(self) -> dict[str, Any]:
        started_at = time.time()
        if self.iteration >= 1:  # a checkpoint to recover from exists
            inject_fault()
        stats = self.member.train(self.images, self.experiment.train.generation_images)
        evaluation = score_member(self.member, stats, self.images, self.mode,
                                  self.experiment.eval, self.factors, self.label_chains)
        # What the member's state now scores, saved beside it in every checkpoint of it.
        self.state_result = {"score": _finite_or_none(evaluation["score"]),
                             "model_scores": [_finite_or_none(s)
                                              for s in evaluation["model_scores"]],
                             "member": self.member_index,
                             "training_iteration": self.iteration + 1}
        return {
            **evaluation,
            "loss": float(np.mean(stats["loss"])),
            "diverged": bool(stats["diverged"]),
            "images_seen": stats["images_seen"],
            "steps": stats["steps"],
            "model_images_per_s": stats["model_images_per_s"],
            # Wall-clock start (Tune's own timestamp has whole seconds): with time_this_iter_s
            # it places the step on a timeline (benchmarks/pbt_overhead.py).
            "step_started_at": started_at,
            "member": self.member_index,
            # The PBT run whose data this member trains on (its metaEpoch in an rPU-VAE run).
            "run": self.run_name,
            "lineage": "-".join(map(str, self.lineage)),
            # Where it ran (the dashboard and results.csv show how trials are placed).
            "device": str(self.device),
            "gpu_ids": [int(g) for g in ray.get_gpu_ids()],
            "node_id": ray.get_runtime_context().get_node_id(),
            "rss_mb": resident_memory_mb(),
            **self.member.hyperparameters,
        }

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        save_checkpoint(Path(checkpoint_dir) / MEMBER_STATE_FILE, {
            "member": self.member.state_dict(),
            "member_index": self.member_index,
            "lineage": list(self.lineage),
        })
        if self.state_result is not None:
            (Path(checkpoint_dir) / MEMBER_RESULT_FILE).write_text(json.dumps(self.state_result))

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"expected a checkpoint directory, got {type(checkpoint).__name__}")
        # Loaded to the CPU: `load_state_dict` copies weights and Adam moments to the
        # member's device, and Adam's `step` counters to where torch keeps them: the device
        # for the fused Adam of the VAEs on CUDA, the CPU for FactorVAE's discriminator (a
        # counter loaded onto the GPU there would cost a sync in every optimiser step).
        state = load_checkpoint(Path(checkpoint) / MEMBER_STATE_FILE)
        self.member.load_state_dict(state["member"])
        result_file = Path(checkpoint) / MEMBER_RESULT_FILE
        # A clone saved before it trains holds the donor's state, and its result.
        self.state_result = (json.loads(result_file.read_text()) if result_file.exists()
                             else None)
        # The loaded state carries the donor's hyperparameters (and Adam's lr); this trial's
        # config holds the explored ones, which win (ray-notes pitfall 4).
        self.member.set_hyperparameters(**member_hyperparameters(self.experiment, self.config))
        donor = int(state["member_index"])
        self.lineage = [*state["lineage"], self.member_index] if donor != self.member_index \
            else list(state["lineage"])
        if donor != self.member_index:
            # A clone draws its own data order and noise from now on (the authors' clones
            # inherited the donor's stream: bug 9 of the spec); the scheduler chose the seed.
            self.member.generator.manual_seed(int(self.config["clone_seed"]))

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # With reuse_actors=True a different trial may land in this actor: rebuild everything
        # that depends on the config (ray-notes pitfall 3). The data stays: it is per run.
        self._build(new_config)
        self.config = new_config
        return True
