"""Reading a checkpoint file safely, and the errors a load raises: what is missing, unexpected or mis-shaped,
listed per key."""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from norga.errors import NorgaError

log = logging.getLogger(__name__)

_SHOW = 10  # keys listed per category in an error message; the rest are counted


class CheckpointNotFoundError(FileNotFoundError, NorgaError):
    """A backbone's pre-trained weights are not on this machine (path and public source in the message)."""

    def __init__(self, message: str, path: str | None = None, source: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.source = source


class CheckpointMismatchError(RuntimeError, NorgaError):
    """A checkpoint does not provide exactly the backbone's tensors (file, keys and shapes in the message)."""


class CheckpointReadError(RuntimeError, NorgaError):
    """A checkpoint file is there but cannot be read as a checkpoint (file, reason and fix in the message)."""


class UntrustedCheckpointError(CheckpointReadError):
    """A checkpoint needs arbitrary pickled objects; read only with ``backbone.trust_checkpoint=true``."""


@dataclass
class LoadReport:
    """What a load did: ``dropped`` counts the keys each drop rule removed."""

    file: str
    loaded: int
    dropped: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # top-level entries outside the nesting key
    resampled: list[str] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        rules = ", ".join(f"{rule!r}: {n}" for rule, n in self.dropped.items())
        text = f"loaded {self.loaded} tensors from {self.file}; dropped {self.n_dropped} keys by rule"
        text += f" ({rules})" if rules else ""
        if self.ignored:
            text += f"; ignored top-level entries: {', '.join(self.ignored)}"
        if self.resampled:
            text += f"; resampled: {', '.join(self.resampled)}"
        return text


_TORCH_FILE = "a torch.save file (zip archive or legacy pickle) holding the weights"
_TRUST_KEY = "backbone.trust_checkpoint=true"


def _reason(err: BaseException, path: Path) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def unreadable(path: Path, expected: str, err: BaseException, source: str) -> CheckpointReadError:
    where = f"download it again from {source}" if source else "download it again"
    return CheckpointReadError(
        f"checkpoint {path} cannot be read ({_reason(err, path)}).\n"
        f"  expected {expected}; the file is truncated, damaged or something else (a saved HTML error page, "
        f"say).\n  {where}, or point backbone.checkpoint at the right file.")


def _pickled_objects(err: pickle.UnpicklingError, path: Path) -> list[str]:
    """The globals a ``weights_only`` load refused, or [] if it failed for another reason (a damaged file)."""
    refused = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
    if not refused:
        return []
    try:  # the complete list, where torch can tell without unpickling (zip archives)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        return [g for g in found if g != "argparse.Namespace"] or refused
    except Exception:  # legacy pickles and older torch: the first refused global is all there is
        return refused


def read_checkpoint(path: str | Path, trust: bool = False, source: str = "") -> Any:
    """The object stored in a ``.safetensors`` or ``torch.save`` file, on the CPU.

    ``torch.load`` runs with ``weights_only=True`` (tensors, plain containers, numbers, strings; plus
    ``argparse.Namespace``, which iBOT's full checkpoint stores its ``args`` as). A file that needs any other
    pickled object raises :class:`UntrustedCheckpointError`: unpickling it could run code stored in the file.
    ``trust=True`` (``backbone.trust_checkpoint=true``) reads it with ``weights_only=False`` instead, never
    silently. A damaged or foreign file raises :class:`CheckpointReadError` naming it; ``source`` (where the
    file comes from) goes into that message.
    """
    path = Path(path)
    if path.suffix == ".npz":
        raise CheckpointMismatchError(
            f"{path}: .npz (JAX) checkpoints are read by timm's own loader; use format TimmPretrained")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error, or OSError/ValueError, on a bad header
            raise unreadable(path, "a .safetensors file", err, source) from err
    if trust:
        log.warning("%s: read with torch.load(weights_only=False) because %s; this runs any code stored in "
                    "the file", path, _TRUST_KEY)
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        objects = [] if trust else _pickled_objects(err, path)
        if objects:
            raise UntrustedCheckpointError(
                f"checkpoint {path} holds pickled Python objects besides tensors and plain containers "
                f"({', '.join(objects)}); unpickling them can run code stored in the file, so backbone weights "
                f"are read with torch.load(weights_only=True) only.\n"
                f"  if the file comes from a source you trust, allow it with {_TRUST_KEY};\n"
                f"  or save just its state dict (torch.save or .safetensors) and point backbone.checkpoint at "
                f"that file.") from None
        raise unreadable(path, _TORCH_FILE, err, source) from err
    except Exception as err:  # EOFError, IndexError, RuntimeError, ...: whatever torch trips on in a bad file
        raise unreadable(path, _TORCH_FILE, err, source) from err


def shape_text(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:_SHOW])
    more = f"\n    ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def _mismatch_message(file: str, model: torch.nn.Module, missing: list[str], unexpected: list[str],
                      shapes: list[str], hint: str, what: str) -> str:
    parts = [f"checkpoint {file} does not match {what or 'the backbone'} "
             f"({type(model).__name__}, {len(model.state_dict())} tensors):"]
    if missing:
        parts.append(_listing("missing: expected by the model, absent after mapping", missing))
    if unexpected:
        parts.append(_listing("unexpected: not in the model and matched by no drop rule", unexpected))
    if shapes:
        parts.append(_listing("shape mismatch", shapes))
    parts.append(hint)
    return "\n".join(parts)


def check_compatible(model: torch.nn.Module, file: str, missing: list[str], unexpected: list[str],
                      shapes: list[str], hint: str, what: str = "") -> None:
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(_mismatch_message(file, model, missing, unexpected, shapes, hint, what))


def model_text(name: str, arch: str) -> str:
    return f"backbone {name!r} [{arch}]" if name else arch


def require_file(checkpoint: str | None, name: str, source: str) -> None:
    if checkpoint is None:
        raise CheckpointNotFoundError(
            f"backbone {name!r} loads its weights from a file, but backbone.checkpoint is not set.\n"
            f"  public source: {source}\n"
            f"  pass backbone.checkpoint=/path/to/file, or backbone.pretrained=false for random weights.",
            None, source)
    if not Path(checkpoint).is_file():
        raise CheckpointNotFoundError(
            f"backbone {name!r}: checkpoint not found at {checkpoint}\n"
            f"  public source: {source}\n"
            f"  download it to that path (its directory is paths.checkpoint_dir), or pass "
            f"backbone.checkpoint=/path/to/file; backbone.pretrained=false builds random weights.",
            checkpoint, source)
