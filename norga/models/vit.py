"""The frozen backbone: a timm VisionTransformer built with :class:`~norga.models.peft.PeftBlock` blocks, and its
forward with parameter-efficient modules attached per block (:func:`vit_features`)."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from omegaconf import DictConfig
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from norga.models.attention import Prefix, PrefixAttention
from norga.models.peft.block import PeftBlock
from norga.models.peft.plan import BlockPeft, attachments, compose

log = logging.getLogger(__name__)


def build_frozen_backbone(cfg: DictConfig) -> VisionTransformer:
    """Build the backbone named by ``cfg`` (a ``conf/backbone`` node), load its weights, and freeze it."""
    from norga.models.checkpoint_formats import build_backbone

    model = build_backbone(cfg, block_fn=PeftBlock, num_classes=0)
    if not isinstance(model.blocks[0].attn, PrefixAttention):
        raise TypeError(f"backbone {cfg.name!r} was not built with prefix attention blocks")
    if cfg.get("reference_fc_norm"):
        # the reference builds MoCo v3 with fc_norm=True: its final norm is an Identity (the checkpoint's trained
        # norm, loaded and checked above, is thrown away) and features are the raw last-block class token; the
        # fresh LayerNorm it puts before the heads belongs to the learners (build_head)
        model.norm = nn.Identity()
        log.info("backbone %s: final norm discarded, features are the raw class token "
                 "(backbone.reference_fc_norm=true, as the reference builds MoCo v3)", cfg.name)
    model.requires_grad_(False)
    return model.eval()


def vit_features(
    vit: VisionTransformer,
    x: torch.Tensor,
    prefixes: dict[int, Prefix] | None = None,
    tokens: dict[int, torch.Tensor] | None = None,
    peft: dict[int, BlockPeft] | None = None,
) -> torch.Tensor:
    """Pre-logit features (the class token after the final norm) with parameter-efficient modules attached
    per block for this pass (:mod:`norga.models.peft`; modules bound to ``vit`` apply as well).

    ``peft``: block index -> :class:`BlockPeft` (any kinds, composed). ``prefixes``: block index ->
    :class:`Prefix` (prefix tuning: keys and values the block's queries also attend to). ``tokens``: block index
    -> ``(B, n, dim)`` prompt tokens put in front of the sequence before that block (prompt tuning, L2P; no
    position embedding, as in the reference); they travel through the later blocks and are dropped before the
    head, which reads the class token. ``prefixes`` and ``tokens`` are shorthands composed into ``peft``.
    """
    if not prefixes and not tokens and not peft:
        return vit.forward_head(vit.forward_features(x), pre_logits=True)
    plan = compose(peft, attachments(prefixes=prefixes, tokens=tokens))
    x = vit.patch_embed(x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    prepended = 0
    for i, block in enumerate(vit.blocks):
        attached = plan.get(i)
        if attached is not None and attached.tokens is not None:
            x = torch.cat([attached.tokens.to(x.dtype), x], dim=1)
            prepended += attached.tokens.shape[1]
            attached = replace(attached, tokens=None)
            attached = None if attached.is_empty() else attached
        x = block(x, peft=attached)
    x = vit.norm(x)
    return vit.forward_head(x[:, prepended:], pre_logits=True)


def check_layers(key: str, layers, vit: VisionTransformer) -> list[int]:
    """``layers`` as a list of distinct block indices of ``vit``; a ValueError names ``key`` otherwise."""
    layers = [int(i) for i in layers]
    depth = len(vit.blocks)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"{key} {layers} has {bad} outside the backbone's {depth} blocks (0..{depth - 1})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{key} {layers} lists a block twice")
    return layers


def build_head(dim: int, num_classes: int, fc_norm: bool = False) -> nn.Module:
    """A linear classifier over all classes (timm's initialisation); with ``fc_norm`` a fresh LayerNorm in front
    that trains with it (``backbone.reference_fc_norm``: the reference's MoCo v3 build)."""
    linear = nn.Linear(dim, num_classes)
    init_linear(linear)
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), linear) if fc_norm else linear


def head_geometry(vit: VisionTransformer) -> tuple[int, int, int]:
    """``(embed_dim, num_heads, head_dim)`` of the backbone's attention."""
    attn = vit.blocks[0].attn
    return vit.embed_dim, attn.num_heads, attn.head_dim


def init_linear(module: nn.Module) -> None:
    """timm's ViT initialisation for the learned heads (truncated normal 0.02, zero bias)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
