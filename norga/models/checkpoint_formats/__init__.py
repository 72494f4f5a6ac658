"""Backbone weights: build the timm ViT named by a ``conf/backbone`` node and load its pre-trained weights
strictly.

A checkpoint file is described declaratively by its *format* (the node's ``format``, instantiated by Hydra):

* :class:`StateDictFormat` -- a PyTorch/safetensors file: which entry holds the weights (``nesting_key``),
  which name prefix to strip, which keys are legitimately unused (``drop``) and optional regex renames.
  After mapping, every tensor of the model must be present with the right shape and nothing may be left
  over; otherwise :class:`CheckpointMismatchError` lists what is missing, unexpected and mis-shaped.
* :class:`TimmPretrained` -- timm's own pretrained machinery (Hugging Face hub cache, or a local
  ``.npz``/``.pth``/``.safetensors`` given as ``backbone.checkpoint``), checked just as strictly.

The reference code kept only checkpoint keys that happened to match the model, so a renamed checkpoint
silently trained on random weights (docs/algorithm.md#d9-silent-checkpoint-mismatch); here a mismatch stops the run.

Files are read with ``torch.load(weights_only=True)``: a file that needs other pickled objects is refused
(:class:`UntrustedCheckpointError`) unless the node sets ``trust_checkpoint: true``; a damaged one raises
:class:`CheckpointReadError` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import timm
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from timm.models.vision_transformer import VisionTransformer

from norga.models.checkpoint_formats.reading import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointReadError,
    LoadReport,
    UntrustedCheckpointError,
    read_checkpoint,
)
from norga.models.checkpoint_formats.state_dict import StateDictFormat
from norga.models.checkpoint_formats.timm_pretrained import TimmPretrained

__all__ = [
    "CheckpointMismatchError", "CheckpointNotFoundError", "CheckpointReadError", "LoadReport", "StateDictFormat",
    "TimmPretrained", "UntrustedCheckpointError", "build_backbone", "check_checkpoint_available", "read_checkpoint",
]

log = logging.getLogger(__name__)


def _resolve_format(cfg: DictConfig) -> StateDictFormat | TimmPretrained:
    fmt = cfg.get("format")
    if fmt is None:
        return TimmPretrained()
    if isinstance(fmt, DictConfig | Mapping):
        return instantiate(fmt, _convert_="all")
    return fmt


def _checkpoint_path(cfg: DictConfig) -> str | None:
    path = cfg.get("checkpoint")
    # relative paths are relative to where the run was launched, even if Hydra changed directory
    return to_absolute_path(str(path)) if path else None


def _as_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def check_checkpoint_available(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointNotFoundError` (with the expected path and the public source) when ``cfg``
    asks for pre-trained weights that are not on this machine. Cheap: call it before loading any data."""
    cfg = _as_config(cfg)
    if not cfg.get("pretrained", True):
        return
    _resolve_format(cfg).check_available(_checkpoint_path(cfg), cfg.name, cfg.get("source", ""), cfg.arch)


def build_backbone(cfg: DictConfig | Mapping[str, Any], **timm_kwargs: Any) -> VisionTransformer:
    """The timm ViT described by a ``conf/backbone`` node, with its pre-trained weights loaded strictly.

    ``timm_kwargs`` go to ``timm.create_model`` after ``cfg.model_kwargs`` (the framework passes
    ``block_fn`` and ``num_classes=0``). With ``cfg.pretrained`` false no file is read (random weights).
    ``cfg.trust_checkpoint`` allows a file that needs arbitrary pickled objects (see :func:`read_checkpoint`).
    Raises :class:`CheckpointNotFoundError`, :class:`CheckpointReadError` (:class:`UntrustedCheckpointError`)
    or :class:`CheckpointMismatchError`.
    """
    cfg = _as_config(cfg)
    model_kwargs = cfg.get("model_kwargs")
    kwargs = dict(OmegaConf.to_container(model_kwargs, resolve=True)) if model_kwargs is not None else {}
    img_size = cfg.get("img_size")
    if img_size is not None and kwargs.setdefault("img_size", img_size) != img_size:
        raise ValueError(f"backbone {cfg.name!r}: img_size {img_size} and model_kwargs.img_size "
                         f"{kwargs['img_size']} disagree")
    kwargs.update(timm_kwargs)
    if not cfg.get("pretrained", True):
        log.info("backbone %s: %s with random weights (backbone.pretrained=false)", cfg.name, cfg.arch)
        return timm.create_model(cfg.arch, pretrained=False, **kwargs)

    fmt = _resolve_format(cfg)
    checkpoint, source = _checkpoint_path(cfg), cfg.get("source", "")
    fmt.check_available(checkpoint, cfg.name, source, cfg.arch)  # before building: fail fast
    model = timm.create_model(cfg.arch, pretrained=False, **kwargs)
    trust = bool(cfg.get("trust_checkpoint", False))
    report = fmt.load_into(model, checkpoint, cfg.name, source, cfg.arch, trust=trust)
    log.info("backbone %s (%s): %s", cfg.name, cfg.arch, report.summary())
    return model
