"""TUNA's model parts (docs/algorithm.md#tuna): cosine heads, one per task, and the "elect" step of EMR
merging that builds the universal adapter from the task snapshots."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from norga.models.peft import AdapterSet


class CosineHeads(nn.Module):
    """One bias-free linear head per task, ``(|C_t|, dim)``, TN(0, 0.02); ``forward`` gives
    ``scale * cos(f, w_c)`` for every class of the benchmark (column ``c`` = global class id ``c``). All heads
    exist from the start (a fixed state-dict layout for resume); a head the optimiser is not given stays
    at its initialisation, as the reference creates it at its task's start."""

    def __init__(self, dim: int, task_classes: Sequence[Sequence[int]], scale: float) -> None:
        super().__init__()
        self.heads = nn.ParameterList(nn.Parameter(torch.empty(len(cs), dim)) for cs in task_classes)
        for w in self.heads:
            nn.init.trunc_normal_(w, std=0.02)  # timm's trunc_normal_(std=.02): bounds +-2, no real truncation
        self.register_buffer("columns", torch.cat([torch.as_tensor(list(cs), dtype=torch.long)
                                                   for cs in task_classes]), persistent=False)
        self.num_classes = int(self.columns.max()) + 1
        self.scale = float(scale)

    def task_cos(self, features: torch.Tensor, task: int) -> torch.Tensor:
        """``cos(f, w_c)`` over task ``task``'s classes, in its class order (local labels)."""
        return F.normalize(features, dim=1) @ F.normalize(self.heads[task], dim=1).T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(features, dim=1) @ F.normalize(torch.cat(list(self.heads)), dim=1).T
        out = cos.new_zeros(len(features), self.num_classes)
        out[:, self.columns] = cos
        return self.scale * out


def emr_elect(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """EMR merging's elect step over same-shaped tensors ``Theta_k``: ``flag = sign(mean_k Theta_k)`` (0 -> -1),
    ``U = flag * max_k |Theta_k * 1[Theta_k * flag > 0]|``."""
    stack = torch.stack([t.detach() for t in tensors])
    flag = (stack.mean(0) > 0).to(stack.dtype) * 2 - 1
    agree = (stack * flag) > 0
    return (stack * agree).abs().amax(0) * flag


@torch.no_grad()
def elect_into(target: AdapterSet, sources: Sequence[AdapterSet]) -> None:
    """Set every tensor of ``target`` to :func:`emr_elect` of the same tensor of ``sources``."""
    states = [s.state_dict() for s in sources]
    target.load_state_dict({name: emr_elect([s[name] for s in states]) for name in states[0]})
