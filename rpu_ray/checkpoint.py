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
import os
import tempfile
from pathlib import Path
from typing import Any

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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload of a checkpoint written by `save_checkpoint`, after verifying it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror})") from None
    header = len(MAGIC) + 32
    if len(raw) < header or raw[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not an rpu-ray checkpoint (or truncated header)")
    digest, data = raw[len(MAGIC):header], raw[header:]
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError(f"{path}: checkpoint is corrupted or truncated (checksum mismatch)")
    try:
        content = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for malformed archives
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        found = content.get("format_version") if isinstance(content, dict) else None
        raise CheckpointError(f"{path}: checkpoint format {found}, this version reads "
                              f"{FORMAT_VERSION}")
    return content["payload"]
