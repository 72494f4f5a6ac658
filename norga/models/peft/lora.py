"""Low-rank weight deltas (LoRA) on a ViT's attention projections and MLP, attached per block, and merged
into the frozen weights for inference.

A :class:`LoRA` on a linear layer ``W`` (out x in) adds ``scale * B A x`` to its output: down ``A``
(rank x in), up ``B`` (out x rank). Targets (:data:`~norga.models.peft.plan.LORA_TARGETS`): ``q``, ``k``,
``v`` (one slice of the fused ``attn.qkv``: out = width, only those rows change), ``qkv``, ``proj``, ``fc1``,
``fc2``. Where each LoRA method puts its branches (InfLoRA: k and v of every block; SD-LoRA: q and v;
HiDe-LoRA: k and v of blocks 0-4) is the method's choice of ``layers`` and ``targets``.

Merging adds ``delta_weight()`` to the frozen weight's rows and leaves the branch out of later passes (the
same output to float rounding, no extra matmuls); unmerging subtracts it again. The backbone is not in any
checkpoint: a method that keeps branches merged re-merges them after loading its modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from norga.models.peft.block import peft_blocks
from norga.models.peft.plan import LORA_TARGETS, TARGET_LINEAR, BlockPeft

DOWN_INITS = ("kaiming_in", "kaiming_rank", "zeros")


class LoRA(nn.Module):
    """``delta(x) = scale * (x A^T) B^T`` with ``A = down`` (rank, in) and ``B = up`` (out, rank), no bias.

    ``up`` starts at zero, so a new LoRA adds exactly nothing. ``down_init``: ``kaiming_in`` (kaiming-uniform,
    a = sqrt 5, fan-in = in: nn.Linear's; InfLoRA, SD-LoRA), ``kaiming_rank`` (the same on the transposed
    matrix, fan-in = rank: HiDe-LoRA's), ``zeros`` (a method that designs ``A`` itself, e.g. InfLoRA's).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float = 1.0,
                 down_init: str = "kaiming_in") -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"a LoRA rank must be at least 1, got {rank}")
        if down_init not in DOWN_INITS:
            raise ValueError(f"unknown LoRA down_init {down_init!r}; choose one of {', '.join(DOWN_INITS)}")
        self.scale = float(scale)
        self.down = nn.Parameter(torch.zeros(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        with torch.no_grad():
            if down_init == "kaiming_in":
                nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            elif down_init == "kaiming_rank":
                nn.init.kaiming_uniform_(self.down.T, a=math.sqrt(5))

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(F.linear(x, self.down), self.up)
        return out if self.scale == 1.0 else self.scale * out

    def delta_weight(self) -> torch.Tensor:
        """The delta as a ``(out, in)`` matrix: ``scale * B A``."""
        return self.scale * (self.up @ self.down)


class MergedLoRA:
    """Branches merged into a backbone's weights by :func:`merge_lora`; :meth:`unmerge` subtracts them."""

    def __init__(self, entries: list[tuple[torch.Tensor, slice, torch.Tensor]]) -> None:
        self._entries = entries

    @torch.no_grad()
    def unmerge(self) -> None:
        for weight, rows, delta in reversed(self._entries):
            weight[rows] -= delta
        self._entries = []


@torch.no_grad()
def merge_lora(vit: VisionTransformer, plan: Mapping[int, BlockPeft]) -> MergedLoRA:
    """Add every LoRA branch of ``plan`` to its linear layer's weight in ``vit`` (``W[rows] += delta_weight()``);
    passes must then leave those branches out. Returns the handle that unmerges them."""
    blocks = peft_blocks(vit)
    entries = []
    for i, peft in plan.items():
        block = blocks[i]
        linears = block.linears()
        for target, branches in peft.lora.items():
            weight = linears[TARGET_LINEAR[target]].weight
            rows = block.target_rows(target) or slice(0, weight.shape[0])
            for branch in branches:
                delta = branch.delta_weight().detach().to(weight.dtype)
                if delta.shape != weight[rows].shape:
                    raise ValueError(f"block {i} {target}: a {tuple(delta.shape)} delta does not fit the "
                                     f"{tuple(weight[rows].shape)} weight")
                weight[rows] += delta
                entries.append((weight, rows, delta))
    return MergedLoRA(entries)


def lora_geometry(vit: VisionTransformer, block: int, target: str) -> tuple[int, int]:
    """``(in, out)`` of a LoRA on ``target`` of block ``block``."""
    b = peft_blocks(vit)[block]
    linear = b.linears()[TARGET_LINEAR[target]]
    rows = b.target_rows(target)
    return linear.in_features, linear.out_features if rows is None else rows.stop - rows.start


class LoRALayers(nn.Module):
    """One :class:`LoRA` per target in each of ``layers`` (block indices) of ``vit``: ``loras[str(block)][target]``.

    :meth:`plan` is what a pass attaches (nothing while merged); :meth:`merge` / :meth:`unmerge` move the
    branches into / out of ``vit``'s frozen weights. Several instances compose (their plans add up): e.g. one
    per task, the old ones merged.
    """

    def __init__(self, vit: VisionTransformer, layers: Sequence[int], targets: Sequence[str], rank: int,
                 scale: float = 1.0, down_init: str = "kaiming_in") -> None:
        super().__init__()
        depth = len(peft_blocks(vit))
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad or not targets or len(set(targets)) != len(targets):
            raise ValueError(f"LoRA targets {list(targets)} must be distinct names among {', '.join(LORA_TARGETS)}")
        if not layers or any(not 0 <= i < depth for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"LoRA layers {list(layers)} must be distinct block indices in 0..{depth - 1}")
        self.layers, self.targets = [int(i) for i in layers], tuple(targets)
        self.loras = nn.ModuleDict({
            str(i): nn.ModuleDict({t: LoRA(*lora_geometry(vit, i, t), rank, scale, down_init) for t in self.targets})
            for i in self.layers})
        self._merged: MergedLoRA | None = None

    @property
    def merged(self) -> bool:
        return self._merged is not None

    def plan(self) -> dict[int, BlockPeft]:
        if self._merged is not None:
            return {}
        return {i: BlockPeft(lora={t: (m,) for t, m in self.loras[str(i)].items()}) for i in self.layers}

    def merge(self, vit: VisionTransformer) -> None:
        """Add the branches to ``vit``'s weights; until :meth:`unmerge`, :meth:`plan` attaches nothing."""
        if self._merged is not None:
            raise RuntimeError("these LoRA branches are merged already")
        self._merged = merge_lora(vit, self.plan())

    def unmerge(self) -> None:
        """Subtract the merged branches from the weights again (equal to the unmerged ones to float rounding)."""
        if self._merged is None:
            raise RuntimeError("these LoRA branches are not merged")
        self._merged.unmerge()
        self._merged = None
