"""The frozen backbone: a timm VisionTransformer built with prefix-aware blocks."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from norga.models.attention import Prefix, PrefixAttention, PrefixBlock


def build_frozen_backbone(cfg: DictConfig) -> VisionTransformer:
    """Build the backbone named by ``cfg`` (a ``conf/backbone`` node), load its weights, and freeze it."""
    from norga.models.checkpoint_formats import build_backbone

    model = build_backbone(cfg, block_fn=PrefixBlock, num_classes=0)
    if not isinstance(model.blocks[0].attn, PrefixAttention):
        raise TypeError(f"backbone {cfg.name!r} was not built with prefix attention blocks")
    model.requires_grad_(False)
    return model.eval()


def vit_features(
    vit: VisionTransformer, x: torch.Tensor, prefixes: dict[int, Prefix] | None = None
) -> torch.Tensor:
    """Pre-logit features (the class token after the final norm) with optional per-layer prefixes."""
    if not prefixes:
        return vit.forward_head(vit.forward_features(x), pre_logits=True)
    x = vit.patch_embed(x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    for i, block in enumerate(vit.blocks):
        x = block(x, prefix=prefixes.get(i))
    x = vit.norm(x)
    return vit.forward_head(x, pre_logits=True)


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
