"""Atomic checkpoint files: a crash at any moment leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from norga.engine.faults import maybe_crash
from norga.errors import NorgaError


class CorruptCheckpointError(RuntimeError, NorgaError):
    """A checkpoint file exists but cannot be read."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        maybe_crash(f"checkpoint/{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by :func:`save_atomic`; a damaged file raises CorruptCheckpointError.

    Read with ``weights_only=True``: the run's checkpoints hold only tensors, containers, numbers and strings,
    so a file that needs any other pickled object was not written by a run and is refused unread (unpickling
    it could run code stored in it).
    """
    path = Path(path)
    fix = "Delete it to resume from the previous checkpoint, or start over with resume=false in a new output directory"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        # a weights_only refusal names the first global the file needs
        text = str(e) if isinstance(e, pickle.UnpicklingError) else ""
        refused = re.findall(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise CorruptCheckpointError(
                f"checkpoint {path} holds pickled objects a run never writes ({', '.join(refused)}); it is not "
                f"loaded, since unpickling them could run code stored in the file. {fix}") from None
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}). {fix}") from e
