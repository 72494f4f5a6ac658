"""A pool of LoRA slots of one geometry, one slot per sample in a pass (HiDe-LoRA's task-specific LoRAs).

Slot ``s`` is a :class:`~norga.models.peft.lora.LoRALayers`; a pass attaches either one slot for the whole batch
(:meth:`LoRAPool.plan`, training) or a slot per sample (:meth:`LoRAPool.plan_for_ids`, inference after task
identification): sample ``i`` then gets ``scale * B_{s_i} A_{s_i} x_i``, the same delta as a pass with slot
``s_i`` alone (a batched matmul over the gathered slots), so a sample's features never depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from norga.models.peft.lora import LoRA, LoRALayers
from norga.models.peft.plan import BlockPeft


class PerSampleLoRA:
    """One LoRA per sample: ``delta(x)_i = scale * x_i A_{s_i}^T B_{s_i}^T`` for ``x`` ``(B, ..., in)``, with
    ``A`` ``(S, rank, in)``, ``B`` ``(S, out, rank)`` the stacked slots and ``ids`` ``(B,)``. Not mergeable (a
    weight delta per sample)."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, ids: torch.Tensor, scale: float) -> None:
        self.down, self.up, self.ids, self.scale = down, up, ids, scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1, shape[-1])
        down, up = self.down[self.ids].to(flat.dtype), self.up[self.ids].to(flat.dtype)
        out = torch.bmm(torch.bmm(flat, down.transpose(1, 2)), up.transpose(1, 2))
        out = out.reshape(*shape[:-1], out.shape[-1])
        return out if self.scale == 1.0 else self.scale * out

    def delta_weight(self) -> torch.Tensor:
        raise TypeError("a per-sample LoRA has one delta per sample and cannot be merged into the weights")


class LoRAPool(nn.Module):
    """``size`` slots, each a :class:`LoRALayers` on ``targets`` of blocks ``layers`` (``slots[s]``)."""

    def __init__(self, vit: VisionTransformer, size: int, layers: Sequence[int], targets: Sequence[str], rank: int,
                 scale: float = 1.0, down_init: str = "kaiming_in") -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"a LoRA pool needs at least one slot, got {size}")
        self.slots = nn.ModuleList(LoRALayers(vit, layers, targets, rank, scale, down_init) for _ in range(size))
        self.layers, self.targets, self.scale = [int(i) for i in layers], tuple(targets), float(scale)

    def __len__(self) -> int:
        return len(self.slots)

    def branches(self, slot: int) -> list[LoRA]:
        """Slot ``slot``'s LoRAs, block by block, target by target (a fixed order)."""
        return [self.slots[slot].loras[str(i)][t] for i in self.layers for t in self.targets]

    def slot_tensors(self, slot: int) -> list[torch.Tensor]:
        """Every tensor of slot ``slot`` (what its features depend on)."""
        return [p for lora in self.branches(slot) for p in (lora.down, lora.up)]

    def plan(self, slot: int) -> dict[int, BlockPeft]:
        """Slot ``slot`` for every sample of the pass."""
        return self.slots[slot].plan()

    def plan_for_ids(self, ids: torch.Tensor) -> dict[int, BlockPeft]:
        """Slot ``ids[i]`` for sample ``i``; one slot's own plan when the batch uses one slot."""
        ids = ids.long()
        first = int(ids[0])
        if bool((ids == first).all()):
            return self.plan(first)
        plan = {}
        for i in self.layers:
            lora = {}
            for t in self.targets:
                slots = [s.loras[str(i)][t] for s in self.slots]
                lora[t] = (PerSampleLoRA(torch.stack([s.down for s in slots]), torch.stack([s.up for s in slots]),
                                         ids, self.scale),)
            plan[i] = BlockPeft(lora=lora)
        return plan

    def train_only(self, slot: int) -> list[nn.Parameter]:
        """Make ``slot`` the only trainable slot; returns its parameters."""
        for s, layers in enumerate(self.slots):
            layers.requires_grad_(s == slot)
        return list(self.slots[slot].parameters())

    @torch.no_grad()
    def copy_slot(self, source: int, target: int) -> None:
        """Slot ``target`` <- slot ``source`` (down and up)."""
        self.slots[target].load_state_dict(self.slots[source].state_dict())

    @torch.no_grad()
    def mix_with_earlier(self, slot: int, momentum: float) -> None:
        """``slot <- (1 - momentum) slot + momentum mean(slots 0..slot-1)``, on every down and up matrix apart."""
        if slot == 0 or momentum == 0.0:
            return
        for new, *earlier in zip(self.slot_tensors(slot), *(self.slot_tensors(s) for s in range(slot)),
                                 strict=True):
            mean = torch.stack(earlier).mean(dim=0)
            new.copy_((1 - momentum) * new + momentum * mean)
