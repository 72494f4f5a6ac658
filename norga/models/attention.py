"""Prefix-tuning attention with NoRGa's non-linear residual gate, as extensions of timm's ViT.

In a prompted layer the queries attend to ``[prefix keys, image keys]`` with logits

    [ s + alpha * gate(tau * s),  scale * q k^T ],   s = scale * q p_k^T

softmaxed together; values are ``[p_v, v]``. Without a gate (HiDe-Prompt) the prefix logits are just ``s``.
The image-image logits are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block

from norga.models.gates import GateFn


@dataclass
class Prefix:
    """Key/value prefixes for one attention layer, one per sample: ``(B, heads, L, head_dim)``.

    ``gate`` is None for plain prefix tuning; otherwise ``tau`` and ``alpha`` are tensors broadcastable
    to the prefix logits ``(B, heads, N, L)``.
    """

    key: torch.Tensor
    value: torch.Tensor
    gate: GateFn | None = None
    tau: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


def prefix_logits(q: torch.Tensor, prefix: Prefix, scale: float) -> torch.Tensor:
    """The (gated) logits of queries ``q`` (B, H, N, D) against the prefix keys: (B, H, N, L)."""
    s = (q * scale) @ prefix.key.transpose(-2, -1)
    if prefix.gate is None:
        return s
    return s + prefix.alpha * prefix.gate(prefix.tau * s)


def explicit_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float
) -> torch.Tensor:
    """The formula written out: one softmax over ``[prefix logits, image logits]``. The reference path."""
    image = (q * scale) @ k.transpose(-2, -1)
    attn = torch.cat([prefix_logits(q, prefix, scale), image], dim=-1).softmax(dim=-1)
    return attn @ torch.cat([prefix.value, v], dim=2)


def fused_prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: Prefix, scale: float
) -> torch.Tensor:
    """The same numbers through ``F.scaled_dot_product_attention``.

    SDPA computes ``scale * q [p_k, k]^T`` itself, so the gate enters as an additive bias on the prefix
    columns only (``alpha * gate(tau * s)``); plain prefix tuning needs no mask at all and keeps the
    flash kernels.
    """
    keys = torch.cat([prefix.key, k], dim=2)
    values = torch.cat([prefix.value, v], dim=2)
    if prefix.gate is None:
        return F.scaled_dot_product_attention(q, keys, values, scale=scale)
    s = (q * scale) @ prefix.key.transpose(-2, -1)
    bias = prefix.alpha * prefix.gate(prefix.tau * s)
    b, h, n, _ = q.shape
    mask = torch.cat([bias.to(q.dtype), bias.new_zeros(b, h, n, k.shape[2]).to(q.dtype)], dim=-1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)


class PrefixAttention(Attention):
    """timm's Attention that also accepts a :class:`Prefix`; without one it is timm's own forward."""

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prefix: Prefix | None = None,
    ) -> torch.Tensor:
        if prefix is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise NotImplementedError("prefix attention does not combine with attention masks")
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = fused_prefix_attention(q, k, v, prefix, self.scale)
        else:
            x = explicit_prefix_attention(q, k, v, prefix, self.scale)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class PrefixBlock(Block):
    """timm's ViT block whose attention takes an optional per-layer :class:`Prefix`.

    Parameter names are timm's, so pretrained weights load unchanged.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["attn_layer"] = PrefixAttention
        super().__init__(*args, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prefix: Prefix | None = None,
    ) -> torch.Tensor:
        if prefix is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), prefix=prefix)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
