"""Exported models: one VAE (e.g. the best VAE of the best member) in a self-describing file.

An exported file is an rpu-ray checkpoint (atomic, checksummed, no pickle; see
`rpu_ray.checkpoint`) holding `kind: "vae"`, the architecture config, the weights of a single
VAE and free-form metadata (scores, hyperparameters, where it came from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rpu_ray.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rpu_ray.models import VAEEnsemble, split_ensemble

KIND = "vae"


def member_ensemble(member_state: dict[str, Any]) -> VAEEnsemble:
    """The fused ensemble of a `Member.state_dict()` (weights only, on the CPU)."""
    config = member_state["config"]
    ensemble = VAEEnsemble(config["num_models"], config["image_shape"], config["z_dim"],
                           config["arch"])
    ensemble.load_state_dict(member_state["model"])
    return ensemble


def export_vae(member_state: dict[str, Any], model_index: int, path: str | Path,
               metadata: dict[str, Any]) -> None:
    """Write VAE `model_index` of a member state as a single-model file."""
    ensemble = member_ensemble(member_state)
    if not 0 <= model_index < ensemble.num_models:
        raise ValueError(f"model_index {model_index} out of range for {ensemble.num_models}")
    save_checkpoint(path, {
        "kind": KIND,
        "config": {**ensemble.config, "image_shape": list(ensemble.image_shape)},
        "model": split_ensemble(ensemble)[model_index],
        "metadata": metadata,
    })


def load_vae(path: str | Path, device: str | torch.device = "cpu"
             ) -> tuple[VAEEnsemble, dict[str, Any]]:
    """A single exported VAE (as an ensemble of one, in eval mode) and its metadata."""
    payload = load_checkpoint(path)
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind != KIND:
        raise CheckpointError(f"{path}: not an exported rpu-ray VAE (kind {kind!r})")
    try:
        config = payload["config"]
        model = VAEEnsemble(1, config["image_shape"], config["z_dim"], config["arch"])
        model.load_state_dict(payload["model"])
        metadata = payload["metadata"]
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        # load_state_dict lists every mismatch on a line of its own: one line, shortened
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise CheckpointError(f"{path}: an rpu-ray VAE file with bad contents "
                              f"({type(err).__name__}: {detail})") from None
    return model.to(device).eval(), metadata
