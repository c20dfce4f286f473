"""The surrogate-label tree: what each leaf-run labelled, level by level.

A leaf-run is a chain of levels. Level 0 is the root: the x-model's labels of the whole data
set. Level t + 1 is the subset that the reduction of level t kept, labelled by the model of
the metaEpoch trained on it. Every level stores the positions of its images in the *full*
data set (so any level can be used without replaying the chain), the labels (encoder means of
the active latents, float, one column per active latent) and which latents they came from.

Stored as one `.npz` per leaf-run (no pickle), loadable as a pandas DataFrame.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


class LabelFileError(ValueError):
    """A surrogate-label file cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class LabelLevel:
    """One level of a leaf-run: `labels[i]` are the surrogate labels of image `indices[i]`."""

    # int64 (n,) positions into the full data set: ascending, except in the authors'
    # reduction mode with one active latent, which keeps them in latent-value order.
    indices: np.ndarray
    labels: np.ndarray  # float64 (n, k) encoder means of the k active latents
    latents: np.ndarray  # int64 (k,) which latent of the labelling VAE each column is

    def __post_init__(self) -> None:
        indices, labels, latents = self.indices, self.labels, self.latents
        if indices.ndim != 1 or labels.ndim != 2 or latents.ndim != 1:
            raise ValueError("a label level needs indices (n,), labels (n, k) and latents (k,)")
        if len(indices) != len(labels) or labels.shape[1] != len(latents):
            raise ValueError(f"label level shapes disagree: indices {indices.shape}, labels "
                             f"{labels.shape}, latents {latents.shape}")


@dataclass
class LeafRunLabels:
    """The label chain of one leaf-run (leaf numbers start at 1, as in the paper)."""

    leaf: int
    levels: list[LabelLevel] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        """Write atomically as .npz: `level{t}_indices`, `level{t}_labels`, `level{t}_latents`."""
        arrays: dict[str, np.ndarray] = {"leaf": np.array(self.leaf)}
        for t, level in enumerate(self.levels):
            arrays[f"level{t}_indices"] = level.indices
            arrays[f"level{t}_labels"] = level.labels
            arrays[f"level{t}_latents"] = level.latents
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> LeafRunLabels:
        """Read a file written by `save`; `LabelFileError` if it is missing or malformed."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                count = sum(1 for key in archive.files if key.endswith("_indices"))
                levels = [LabelLevel(archive[f"level{t}_indices"].astype(np.int64),
                                     archive[f"level{t}_labels"].astype(np.float64),
                                     archive[f"level{t}_latents"].astype(np.int64))
                          for t in range(count)]
                return cls(int(archive["leaf"]), levels)
        except KeyError as err:
            raise LabelFileError(f"{path}: not a surrogate-label file (no array {err})") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise LabelFileError(f"{path}: cannot read surrogate labels ({err})") from None

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (level, image) with columns `leaf`, `level`, `index` and
        `label_<latent>` for the latents labelled at that level (NaN elsewhere)."""
        frames = []
        for t, level in enumerate(self.levels):
            frame = pd.DataFrame(level.labels, columns=[f"label_{z}" for z in level.latents])
            frame.insert(0, "index", level.indices)
            frame.insert(0, "level", t)
            frame.insert(0, "leaf", self.leaf)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["leaf", "level", "index"])

    def to_payload(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(indices, labels) per level: what the final run's leaf-MIG scoring needs."""
        return [(level.indices, level.labels) for level in self.levels]
