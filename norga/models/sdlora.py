"""SD-LoRA's low-rank updates: one LoRA per task on chosen targets of chosen blocks, earlier tasks' directions
frozen and normalised, every task's contribution scaled by one learned magnitude shared by all blocks and targets
(docs/algorithm.md#sd-lora).

While task ``t`` is the latest, each branch (block, target) adds to its layer's output

    delta(x) = m_t B_t A_t x + sum_{i<t} m_i B_i A_i x / n_i

with ``n_i = ||B_i||_F ||A_i||_F`` (``direction_norm="product_of_norms"``, the authors' code) or
``n_i = ||B_i A_i||_F`` (``"norm_of_product"``, the paper's normalised direction). ``m`` is one vector of
magnitudes: ``m_t`` is the paper's alpha_t, ``m_i`` (i < t) its beta_i. The current term is not normalised.

All tasks' LoRA are built at once (task ``t`` gets rank ``ranks[t]``; ``B`` zero, ``A`` kaiming-uniform, as
:class:`~norga.models.peft.LoRA`), so the module's structure never changes and every checkpoint holds every
task's tensors; ``active`` (a buffer) says how many tasks' branches are in use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from norga.models.peft import BlockPeft, LoRALayers

DIRECTION_NORMS = ("product_of_norms", "norm_of_product")
RANK_SCHEDULES = (None, "rr")


def task_ranks(num_tasks: int, rank: int, schedule: str | None) -> list[int]:
    """The LoRA rank of each task. ``None``: ``rank`` throughout. ``rr`` (SD-LoRA-RR, the authors' commented
    block): ``rank`` for tasks 0-3, ``rank - 2`` for tasks 4-7, ``rank - 4`` from task 8 (10, 8, 6 at rank 10),
    never below 1."""
    if schedule not in RANK_SCHEDULES:
        raise ValueError(f"unknown rank schedule {schedule!r}; choose null or rr")
    if schedule is None:
        return [rank] * num_tasks
    return [max(1, rank - 2 * min(t // 4, 2)) for t in range(num_tasks)]


class SDLoRABranch:
    """One (block, target) of an :class:`SDLoRA`: the composed delta of the active tasks (a
    :class:`~norga.models.peft.LowRankBranch`: ``forward(x)`` and ``delta_weight()``). Not a module: its
    tensors belong to the :class:`SDLoRA` that made it."""

    def __init__(self, owner: SDLoRA, block: int, target: str) -> None:
        self.owner, self.block, self.target = owner, block, target

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A, B, c)``: the active tasks' down matrices stacked ``(R, in)``, up matrices ``(out, R)`` and
        each rank component's coefficient ``(R,)`` (its task's magnitude over its task's norm)."""
        owner = self.owner
        loras = [owner.tasks[t].loras[str(self.block)][self.target] for t in range(owner.num_active)]
        down = torch.cat([m.down for m in loras])
        up = torch.cat([m.up for m in loras], dim=1)
        return down, up, owner.coefficients(loras)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        down, up, coef = self.factors()
        return F.linear(F.linear(x, down) * coef.to(x.dtype), up)

    def delta_weight(self) -> torch.Tensor:
        down, up, coef = self.factors()
        return (up * coef) @ down


class SDLoRA(nn.Module):
    """Every task's LoRA on ``targets`` of ``layers`` and the magnitudes ``m`` ``(num_tasks,)``.

    ``tasks[t]`` is task t's :class:`~norga.models.peft.LoRALayers`; :meth:`activate` makes tasks ``0..t`` the
    ones :meth:`plan` attaches (task t unnormalised); :meth:`trainable` lists what task t trains.
    """

    def __init__(self, vit: VisionTransformer, layers: Sequence[int], targets: Sequence[str], ranks: Sequence[int],
                 magnitude_init: float = 0.8, direction_norm: str = "product_of_norms") -> None:
        super().__init__()
        if direction_norm not in DIRECTION_NORMS:
            raise ValueError(f"unknown direction_norm {direction_norm!r}; choose one of {', '.join(DIRECTION_NORMS)}")
        if not ranks:
            raise ValueError("SD-LoRA needs at least one task")
        self.layers, self.targets = [int(i) for i in layers], tuple(targets)
        self.direction_norm = direction_norm
        self.magnitude_init = float(magnitude_init)
        self.tasks = nn.ModuleList(LoRALayers(vit, self.layers, self.targets, int(r)) for r in ranks)
        self.magnitudes = nn.Parameter(torch.full((len(ranks),), self.magnitude_init))
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        self._branches = {(i, t): SDLoRABranch(self, i, t) for i in self.layers for t in self.targets}
        self._index: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def num_active(self) -> int:
        return int(self.active)

    def activate(self, task: int, reset_magnitudes: bool) -> None:
        """Make task ``task`` the latest (tasks ``0..task`` attached). ``reset_magnitudes``: every magnitude in
        use restarts at ``magnitude_init`` (the authors' rebuild of the model each task); otherwise the earlier
        ones keep their learned values and the new one starts at ``magnitude_init`` (it was never trained)."""
        if not 0 <= task < len(self.tasks):
            raise ValueError(f"task {task} is outside SD-LoRA's {len(self.tasks)} tasks")
        self.active.fill_(task + 1)
        with torch.no_grad():
            if reset_magnitudes:
                self.magnitudes[: task + 1] = self.magnitude_init
            else:
                self.magnitudes[task] = self.magnitude_init

    def trainable(self) -> list[nn.Parameter]:
        """What the latest task trains: its own A and B and every magnitude (alpha_t and beta_0..beta_{t-1};
        the unused later entries get zero gradient). Sets ``requires_grad`` accordingly: earlier tasks' A and B
        are frozen."""
        self.requires_grad_(False)
        current = self.tasks[self.num_active - 1]
        current.requires_grad_(True)
        self.magnitudes.requires_grad_(True)
        return [*current.parameters(), self.magnitudes]

    def coefficients(self, loras: Sequence[nn.Module]) -> torch.Tensor:
        """Per rank component of the stacked active tasks' LoRA ``loras`` (task order): ``m_i / n_i`` for the
        earlier tasks, ``m_t`` for the latest."""
        norms = []
        with torch.no_grad():  # earlier directions are frozen, and the latest one is not normalised
            for m in loras[:-1]:
                a, b = m.down.float(), m.up.float()
                if self.direction_norm == "product_of_norms":
                    norms.append(torch.linalg.matrix_norm(b) * torch.linalg.matrix_norm(a))
                else:  # ||B A||_F^2 = trace((B^T B)(A A^T)), with rank x rank matrices
                    norms.append(((b.T @ b) * (a @ a.T)).sum().sqrt())
            norms.append(torch.ones((), device=self.magnitudes.device))
        # an all-zero direction (a task that never stepped) adds 0, not 0/0
        scale = self.magnitudes[: len(loras)] / torch.stack(norms).clamp_min(1e-12).to(self.magnitudes)
        return scale[self._component_tasks(len(loras), scale.device)]

    def _component_tasks(self, tasks: int, device: torch.device) -> torch.Tensor:
        """The task of each rank component of tasks ``0..tasks-1`` stacked, on ``device`` (built once: no
        host-to-device copy per forward)."""
        key = (tasks, str(device))
        if key not in self._index:
            ranks = torch.tensor([t.loras[str(self.layers[0])][self.targets[0]].rank for t in self.tasks[:tasks]])
            self._index[key] = torch.arange(tasks).repeat_interleave(ranks).to(device)
        return self._index[key]

    def plan(self) -> dict[int, BlockPeft]:
        """The active tasks' composed branches, one per (block, target); empty before any task."""
        if self.num_active == 0:
            return {}
        return {i: BlockPeft(lora={t: (self._branches[(i, t)],) for t in self.targets}) for i in self.layers}

    def branch(self, block: int, target: str) -> SDLoRABranch:
        return self._branches[(block, target)]
