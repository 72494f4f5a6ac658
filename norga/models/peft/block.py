"""timm's ViT block with every kind of parameter-efficient module attachable per forward pass.

:class:`PeftBlock` subclasses timm's ``Block`` (its attention is :class:`~norga.models.attention.PrefixAttention`);
parameter names are timm's, so pretrained weights load unchanged and the backbone's state dict holds no
attached module. One pass of a block with a :class:`~norga.models.peft.plan.BlockPeft`:

    a = attn(norm1(x), prefix)                       qkv(u) + LoRA_q|k|v|qkv(u),  proj(u) + LoRA_proj(u)
    h = x + ls1(a)
    out = h + ls2(mlp(norm2(h)) + sum_j adapter_j(h))   fc1/fc2(u) + LoRA_fc1/fc2(u)

LoRA branches enter through a forward hook on each linear layer (``attn.qkv``, ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``), which adds the branches the block has set on it for this pass, so timm's own attention and MLP
forwards run unchanged; the prefix goes to the attention; the adapters are added to the MLP's output before
LayerScale and drop path (both identities in the backbones norga uses, so this is the authors'
``h + mlp(norm2(h)) + adapter(h)``). With nothing attached the block is timm's forward, op for op.

Modules can also be *bound* to a backbone (:func:`bind`): they then apply to every pass, timm's own
``forward_features`` included, until the returned handle is removed (RanPAC's first-session adapters, which
change the backbone's features for good).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from norga.models.attention import Prefix, PrefixAttention
from norga.models.peft.plan import TARGET_LINEAR, BlockPeft, compose

# attribute of a linear layer holding this pass's branches: ((row slice or None, branch), ...)
_BRANCHES = "_peft_branches"


def _add_branches(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook of a block's linear layers: ``output + sum of branch(x)``; a q, k or v branch is added to
    its slice of the output only (in place: the layer's backward does not need its output)."""
    branches = module.__dict__.get(_BRANCHES)
    if not branches:
        return None
    x = args[0]
    for rows, branch in branches:
        delta = branch(x).to(output.dtype)
        if rows is None:
            output = output + delta
        else:
            output[..., rows] += delta
    return output


class PeftBlock(Block):
    """timm's ViT block that takes a per-pass :class:`BlockPeft` (or just a :class:`Prefix`); see the module
    docstring for the formula."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["attn_layer"] = PrefixAttention
        super().__init__(*args, **kwargs)
        self._bound: list[BlockPeft] = []
        for linear in self.linears().values():
            linear.register_forward_hook(_add_branches)

    def linears(self) -> dict[str, nn.Linear]:
        """The linear layers LoRA can target, by name: ``qkv``, ``proj``, ``fc1``, ``fc2``."""
        return {"qkv": self.attn.qkv, "proj": self.attn.proj, "fc1": self.mlp.fc1, "fc2": self.mlp.fc2}

    def target_rows(self, target: str) -> slice | None:
        """The output rows of its linear layer a LoRA target changes (None: all of them)."""
        if target not in ("q", "k", "v"):
            return None
        width = self.attn.qkv.out_features // 3
        start = "qkv".index(target) * width
        return slice(start, start + width)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prefix: Prefix | None = None,
        peft: BlockPeft | None = None,
    ) -> torch.Tensor:
        if prefix is not None:
            peft = compose({0: peft} if peft is not None else None, {0: BlockPeft(prefix=prefix)}).get(0)
        if self._bound:
            peft = compose(*({0: b} for b in self._bound), {0: peft} if peft is not None else None).get(0)
        if peft is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if peft.tokens is not None:
            raise ValueError("prompt tokens are put in front of the sequence by the backbone's forward "
                             "(norga.models.vit.vit_features), not by a block")
        linears = self.linears()
        for target, branches in peft.lora.items():
            linear = linears[TARGET_LINEAR[target]]
            rows = self.target_rows(target)
            linear.__dict__[_BRANCHES] = linear.__dict__.get(_BRANCHES, ()) + tuple((rows, b) for b in branches)
        try:
            kwargs = {"attn_mask": attn_mask, "is_causal": is_causal} if attn_mask is not None or is_causal else {}
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), prefix=peft.prefix, **kwargs)))
            y = self.mlp(self.norm2(x))
            for adapter in peft.adapters:
                y = y + adapter(x).to(y.dtype)
            return x + self.drop_path2(self.ls2(y))
        finally:
            for linear in linears.values():
                linear.__dict__.pop(_BRANCHES, None)


def peft_blocks(vit: VisionTransformer) -> list[PeftBlock]:
    """The backbone's blocks; a TypeError says how to build it if they are not :class:`PeftBlock`."""
    blocks = list(vit.blocks)
    if not all(isinstance(b, PeftBlock) for b in blocks):
        raise TypeError("parameter-efficient modules attach to a backbone built with block_fn=PeftBlock "
                        "(norga.models.vit.build_frozen_backbone builds it so)")
    return blocks


class Binding:
    """Handle of modules bound to a backbone by :func:`bind`; :meth:`remove` detaches them."""

    def __init__(self, blocks: list[PeftBlock], plan: Mapping[int, BlockPeft]) -> None:
        self._entries = [(blocks[i], peft) for i, peft in plan.items()]
        for block, peft in self._entries:
            block._bound.append(peft)

    def remove(self) -> None:
        for block, peft in self._entries:
            block._bound[:] = [b for b in block._bound if b is not peft]
        self._entries.clear()


def bind(vit: VisionTransformer, plan: Mapping[int, BlockPeft]) -> Binding:
    """Attach ``plan``'s LoRA branches and adapters to every later pass of ``vit`` (timm's own forward
    included), before whatever a pass attaches itself; prefixes and prompt tokens are per batch and cannot
    be bound. The modules stay owned by the caller (they are not in the backbone's state dict)."""
    blocks = peft_blocks(vit)
    for i, peft in plan.items():
        if not 0 <= i < len(blocks):
            raise ValueError(f"block {i} is outside the backbone's {len(blocks)} blocks")
        if peft.prefix is not None or peft.tokens is not None:
            raise ValueError(f"block {i}: prefixes and prompt tokens belong to one batch; pass them to each "
                             "forward (vit_features) instead of binding them")
    return Binding(blocks, plan)
