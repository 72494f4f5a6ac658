"""The checkpoint format of a plain PyTorch/safetensors file: which entry holds the weights, which prefix to
strip, which keys are legitimately unused and which names to rename onto timm's ViT."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from norga.models.checkpoint_formats import reading
from norga.models.checkpoint_formats.reading import (
    CheckpointMismatchError,
    LoadReport,
    check_compatible,
    model_text,
    require_file,
    shape_text,
)

log = logging.getLogger(__name__)

@dataclass
class StateDictFormat:
    """How a ``torch.save``/safetensors checkpoint maps onto timm's ViT names.

    Each key of the nested state dict is, in order: dropped if a ``drop`` regex matches it (searched in the
    file's own name); otherwise stripped of ``strip_prefix`` (a key without the prefix is an error); then
    rewritten by each ``rename`` regex in turn. ``nesting_key`` names the entry holding the weights (a
    list: the first one present), None for a file that is the state dict itself.
    """

    nesting_key: str | list[str] | None = None
    strip_prefix: str = ""
    drop: list[str] = field(default_factory=list)
    rename: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Hydra may hand over OmegaConf containers; compile once so a bad regex fails at build time
        self.drop = list(self.drop or [])
        self.rename = dict(self.rename or {})
        self._drop = [re.compile(p) for p in self.drop]
        self._rename = [(re.compile(p), r) for p, r in self.rename.items()]

    def describe(self) -> str:
        return (f"nesting_key={self.nesting_key!r}, strip_prefix={self.strip_prefix!r}, drop={self.drop}, "
                f"rename={self.rename}")

    def select(self, checkpoint: Any, file: str) -> tuple[Mapping[str, Any], list[str]]:
        """The nested state dict and the top-level entries left aside."""
        if not isinstance(checkpoint, Mapping):
            raise CheckpointMismatchError(f"{file}: expected a dict, found {type(checkpoint).__name__}")
        if self.nesting_key is None:
            return checkpoint, []
        candidates = [self.nesting_key] if isinstance(self.nesting_key, str) else list(self.nesting_key)
        for key in candidates:
            if key in checkpoint and isinstance(checkpoint[key], Mapping):
                return checkpoint[key], [str(k) for k in checkpoint if k != key]
        raise CheckpointMismatchError(
            f"{file}: none of the nesting keys {candidates} holds a state dict; the file's top-level keys "
            f"are {list(checkpoint)[:20]}. Set backbone.format.nesting_key."
        )

    def map_keys(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, int],
                                                          list[str]]:
        """``(mapped, origin, dropped, lacking_prefix)``: tensors by timm name, each one's file name, the
        number of keys each drop rule removed, and the undropped keys without ``strip_prefix``."""
        mapped: dict[str, Any] = {}
        origin: dict[str, str] = {}
        dropped: Counter[str] = Counter()
        lacking: list[str] = []
        for key, value in state.items():
            rule = next((r for r in self._drop if r.search(key)), None)
            if rule is not None:
                dropped[rule.pattern] += 1
                continue
            if not key.startswith(self.strip_prefix):
                lacking.append(key)
                continue
            name = key[len(self.strip_prefix):]
            for pattern, replacement in self._rename:
                name = pattern.sub(replacement, name)
            if name in mapped:
                raise CheckpointMismatchError(f"keys {origin[name]!r} and {key!r} both map to {name!r}")
            mapped[name], origin[name] = value, key
        return mapped, origin, dict(dropped), lacking

    def check_available(self, checkpoint: str | None, name: str = "", source: str = "",
                        arch: str = "") -> None:
        """Raise :class:`CheckpointNotFoundError` unless ``checkpoint`` is an existing file."""
        require_file(checkpoint, name, source)

    def load_into(self, model: torch.nn.Module, checkpoint: str | None, name: str = "", source: str = "",
                  arch: str = "", trust: bool = False) -> LoadReport:
        """Load ``checkpoint`` into ``model`` (every tensor, exact shapes) and report what was dropped.

        ``trust``: read a file that needs arbitrary pickled objects (see :func:`read_checkpoint`)."""
        self.check_available(checkpoint, name, source)
        file = str(checkpoint)
        state, ignored = self.select(reading.read_checkpoint(file, trust, source), file)
        mapped, origin, dropped, lacking = self.map_keys(state)
        expected = model.state_dict()

        def named(k: str) -> str:
            return k if origin[k] == k else f"{k} (file: {origin[k]})"

        def mismatch(k: str, found: Any) -> str:
            return f"{named(k)}: expected {shape_text(expected[k])}, found {shape_text(found)}"

        missing = [k for k in expected if k not in mapped]
        unexpected = [f"{k} (no prefix {self.strip_prefix!r})" for k in lacking]
        unexpected += [named(k) for k in mapped if k not in expected]
        tensors = {k: v for k, v in mapped.items() if k in expected}
        # pos_embed and the patch embedding may legitimately differ before timm's filter (resolution
        # resampling, linear -> conv reshape): their shapes are checked after it
        deferred = {"pos_embed", "patch_embed.proj.weight"}
        shapes = [mismatch(k, v) for k, v in tensors.items()
                  if not isinstance(v, torch.Tensor) or (k not in deferred and v.shape != expected[k].shape)]
        hint = (f"  format: {self.describe()}\n  fix the file or backbone.format; keys that are legitimately "
                f"unused need a regex in backbone.format.drop.")
        if len(missing) == len(expected):
            hint += f"\n  no model key was found; the file's first keys are: {list(state)[:8]}"
        check_compatible(model, file, missing, unexpected, shapes, hint, model_text(name, arch))

        try:  # timm's reshapes and resampling; names are already timm's
            filtered = checkpoint_filter_fn(dict(tensors), model)
        except (RuntimeError, ValueError, AssertionError) as err:
            message = f"{file}: timm's checkpoint_filter_fn failed: {err}\n{hint}"
            raise CheckpointMismatchError(message) from err
        resampled = []
        for k in sorted(deferred & tensors.keys()):
            before, after = tensors[k], filtered.get(k)
            if after is not None and after.shape == expected[k].shape and (
                    before.shape == after.shape
                    or k == "pos_embed"  # trained at another resolution: resampled to the model's grid
                    or before.numel() == after.numel()):  # linear patch embedding reshaped to a conv
                if before.shape != after.shape:
                    resampled.append(f"{k} {shape_text(before)} -> {shape_text(after)}")
                continue
            shapes.append(mismatch(k, before))  # e.g. a kernel for another patch size: another architecture
        check_compatible(model, file, [k for k in expected if k not in filtered], [], shapes, hint,
                          model_text(name, arch))
        if resampled:
            log.warning("%s: adapted by timm's checkpoint_filter_fn: %s", file, ", ".join(resampled))
        model.load_state_dict(filtered, strict=True)
        return LoadReport(file, len(filtered), dropped, ignored, resampled)
