"""Member checkpoints on disk: atomic, checksummed, loadable without unpickling.

File layout: the 8-byte magic `RPURAYCK`, a 32-byte SHA-256 digest of the payload, then the
payload written by `torch.save` (tensors and plain containers only). Writing goes to a
temporary file in the same folder, is flushed to disk and renamed over the target, so a crash
mid-write leaves the previous checkpoint (or none), never a half-written one. Loading verifies
the digest before `torch.load(..., weights_only=True)`: a truncated or altered file raises
`CheckpointError` instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

MAGIC = b"RPURAYCK"
FORMAT_VERSION = 1

# A Tune checkpoint of a member is a folder holding the member's state and, beside it, the
# result of the generation that produced that state: score, model scores, member and
# training iteration. The best snapshot of a run is chosen by what this file says, not by the
# metrics Tune pairs with a checkpoint (Ray 2.60 sometimes paired a member's next checkpoint
# with the result of the generation before).
MEMBER_STATE_FILE = "member.pt"
MEMBER_RESULT_FILE = "member_result.json"
# Folder of a Tune experiment holding a copy of its best member checkpoint (the scheduler
# keeps it at every generation barrier): Tune deletes checkpoints by its own pairing of states
# and scores, which can rank the best state low.
BEST_CHECKPOINT_DIR = "best_checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or of an incompatible format."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` (tensors and plain containers) atomically to `path`."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "payload": payload}, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(hashlib.sha256(data).digest())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verified_payload_bytes(raw: bytes, name: str | Path) -> bytes:
    """The payload bytes of the checkpoint file content `raw` (read from `name`), after checking
    its magic and digest; `CheckpointError` if it is not a whole rpu-ray checkpoint."""
    header = len(MAGIC) + 32
    if len(raw) < header or raw[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{name}: not an rpu-ray checkpoint (or truncated header)")
    digest, data = raw[len(MAGIC):header], raw[header:]
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError(f"{name}: checkpoint is corrupted or truncated (checksum mismatch)")
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload of a checkpoint written by `save_checkpoint`, after verifying it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror})") from None
    data = verified_payload_bytes(raw, path)
    try:
        content = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for malformed archives
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        found = content.get("format_version") if isinstance(content, dict) else None
        raise CheckpointError(f"{path}: checkpoint format {found}, this version reads "
                              f"{FORMAT_VERSION}")
    return content["payload"]


def result_rank(result: dict[str, Any]) -> tuple[float, int, int] | None:
    """Sort key of a member result saved beside its state (`MEMBER_RESULT_FILE`): the highest
    score first, ties to the earliest generation, then the lowest member; None for a result
    without a finite score (diverged)."""
    score = result.get("score")
    if score is None or not math.isfinite(score):
        return None
    return -score, int(result["training_iteration"]), int(result["member"])


# A checkpoint folder as the caller names it: a `Path`, or a path string on Tune's storage.
FolderT = TypeVar("FolderT", str, Path)


def ranked_member_results(results: Iterable[tuple[FolderT, dict[str, Any]]]
                          ) -> list[tuple[FolderT, dict[str, Any]]]:
    """Of (checkpoint folder, the result its state scored), those with a finite score, best
    first by `result_rank`, equal results by folder name."""
    scored = [(folder, result) for folder, result in results if result_rank(result) is not None]
    return sorted(scored, key=lambda item: (result_rank(item[1]), str(item[0])))


def best_member_result(results: Iterable[tuple[FolderT, dict[str, Any]]]
                       ) -> tuple[FolderT, dict[str, Any]] | None:
    """The first of `ranked_member_results`; None if no result has a finite score."""
    ranked = ranked_member_results(results)
    return ranked[0] if ranked else None
