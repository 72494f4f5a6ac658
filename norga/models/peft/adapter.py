"""AdaptFormer-style bottleneck adapters parallel to the MLP of a timm ViT's blocks (RanPAC's first-session
adaptation, docs/algorithm.md#ranpac; the module EASE, MOS, APER and TUNA share).

In block ``i`` the adapter reads the residual stream after attention ``h`` (the input of ``norm2``, no
LayerNorm of its own) and its output is added to the MLP's:

    out = h + mlp(norm2(h)) + scale * up(dropout(relu(down(h))))

:class:`AdapterSet` is one adapter per block; :class:`AdapterBank` several sets, one chosen per pass (per-task
adapters); :class:`ParallelAdapters` a set bound to a backbone for good (every pass uses it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from norga.models.peft.block import bind, peft_blocks
from norga.models.peft.plan import BlockPeft


class Adapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))``: down kaiming-uniform (a = sqrt 5), up and both biases zero, so a
    new adapter adds exactly zero (the backbone's features are unchanged until it trains). ``scale`` is fixed,
    not learned; dropout acts on the bottleneck in training only."""

    def __init__(self, dim: int, bottleneck: int, dropout: float, scale: float) -> None:
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"an adapter's bottleneck must be at least 1, got {bottleneck}")
        if not 0 <= dropout < 1:
            raise ValueError(f"an adapter's dropout must be in [0, 1), got {dropout}")
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = float(scale)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(torch.relu(self.down(x))))


def _check_layers(layers: Sequence[int] | None, depth: int) -> list[int]:
    layers = list(range(depth)) if layers is None else [int(i) for i in layers]
    if not layers or any(not 0 <= i < depth for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"adapter layers {layers} must be distinct block indices in 0..{depth - 1}")
    return layers


class AdapterSet(nn.Module):
    """One :class:`Adapter` in each of ``layers`` (default: every block) of a ViT of width ``dim``:
    ``adapters[str(block)]``. :meth:`plan` is what a pass attaches."""

    def __init__(self, dim: int, depth: int, bottleneck: int, dropout: float, scale: float,
                 layers: Sequence[int] | None = None) -> None:
        super().__init__()
        self.layers = _check_layers(layers, depth)
        self.adapters = nn.ModuleDict({str(i): Adapter(dim, bottleneck, dropout, scale) for i in self.layers})

    @classmethod
    def for_vit(cls, vit: VisionTransformer, bottleneck: int, dropout: float, scale: float,
                layers: Sequence[int] | None = None) -> AdapterSet:
        return cls(vit.embed_dim, len(peft_blocks(vit)), bottleneck, dropout, scale, layers)

    def plan(self) -> dict[int, BlockPeft]:
        return {i: BlockPeft(adapters=(self.adapters[str(i)],)) for i in self.layers}


class AdapterBank(nn.Module):
    """Adapter sets of one geometry, ``sets[k]``; a pass attaches the one it names (:meth:`plan`): per-task
    adapters (EASE's fresh set per task, MOS's and TUNA's snapshots, a merged one)."""

    def __init__(self, dim: int, depth: int, bottleneck: int, dropout: float, scale: float,
                 layers: Sequence[int] | None = None) -> None:
        super().__init__()
        self.geometry = (dim, depth, bottleneck, dropout, scale, _check_layers(layers, depth))
        self.sets = nn.ModuleList()

    def __len__(self) -> int:
        return len(self.sets)

    def add(self, copy_of: int | None = None) -> int:
        """Append a fresh set (zero output) or a copy of set ``copy_of``, in the bank's train/eval mode; returns
        its index."""
        new = AdapterSet(*self.geometry).train(self.training)
        if copy_of is not None:
            new.load_state_dict(self.sets[copy_of].state_dict())
        if len(self.sets):
            new = new.to(next(self.sets[0].parameters()).device)
        self.sets.append(new)
        return len(self.sets) - 1

    def plan(self, index: int) -> dict[int, BlockPeft]:
        """What a pass with set ``index`` attaches."""
        if not -len(self.sets) <= index < len(self.sets):
            raise IndexError(f"adapter set {index} does not exist ({len(self.sets)} sets)")
        return self.sets[index].plan()


class ParallelAdapters(AdapterSet):
    """An :class:`AdapterSet` over every block of ``vit``, bound to it (:func:`~norga.models.peft.block.bind`):
    every pass through ``vit`` uses it until :meth:`remove`."""

    def __init__(self, vit: VisionTransformer, bottleneck: int, dropout: float, scale: float) -> None:
        super().__init__(vit.embed_dim, len(peft_blocks(vit)), bottleneck, dropout, scale)
        self._binding = bind(vit, self.plan())

    def remove(self) -> None:
        """Detach from the backbone (it computes its own features again)."""
        self._binding.remove()
