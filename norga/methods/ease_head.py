"""EASE's subspace prototype classifier (docs/algorithm.md#ease): one prototype block per class and subspace
(the frozen PTM if used, adapter 0..T), the semantic-guided complement of old classes' blocks in newer
subspaces, and the reweighted per-block cosine logits.

Subspace ``s`` of ``protos`` (``(S, C, D)``) is adapter ``s`` (``s < num_tasks``); with the PTM it is block
``num_tasks`` (the last), whatever order the features come in.
"""

from __future__ import annotations

import torch
from torch import nn

from norga.methods.adapter_tuning import block_cosines, concat_cosine


def complement(protos: torch.Tensor, old: list[int], newer: list[int], reference: int, target: int,
               tau: float = 1.0) -> torch.Tensor:
    """Old classes' prototypes in subspace ``target``, where they have none: ``sum_n w_cn P[target, n]`` over
    the classes ``newer`` that have real prototypes there, with ``w_c = softmax_n(cos(P[ref, c], P[ref, n]) /
    tau)`` measured in the old classes' own subspace ``reference``. Returns ``(len(old), D)``."""
    a_hat = protos[reference, old]  # old classes, own subspace
    a = protos[reference, newer]    # newer classes, same subspace
    sim = torch.nn.functional.normalize(a_hat, dim=1) @ torch.nn.functional.normalize(a, dim=1).T
    weights = torch.softmax(sim / tau, dim=1)
    return weights @ protos[target, newer]


class SubspacePrototypes(nn.Module):
    """Prototype blocks ``(S, C, D)``, the task of every class, and EASE's two logit rules."""

    def __init__(self, task_classes: list[list[int]], num_classes: int, dim: int, use_ptm: bool) -> None:
        super().__init__()
        self.num_tasks = len(task_classes)
        self.task_classes = [list(map(int, c)) for c in task_classes]
        self.use_ptm = use_ptm
        self.register_buffer("protos", torch.zeros(self.num_tasks + int(use_ptm), num_classes, dim))
        task_of = torch.full((num_classes,), -1, dtype=torch.long)
        for t, cs in enumerate(self.task_classes):
            task_of[cs] = t
        self.register_buffer("task_of", task_of, persistent=False)

    @property
    def ptm(self) -> int:
        """The PTM's block index (only with ``use_ptm``)."""
        return self.num_tasks

    def subspaces(self, upto_task: int) -> list[int]:
        """The blocks live after task ``upto_task``, in the features' order: PTM first, then adapters 0..T."""
        return ([self.ptm] if self.use_ptm else []) + list(range(upto_task + 1))

    @torch.no_grad()
    def recompute_complement(self, upto_task: int, tau: float, recalc_sim: bool = True,
                             last_adapter: int | None = None) -> None:
        """Fill every old class's blocks in newer adapter subspaces (``recalc_sim``: the whole upper triangle,
        recomputed with all classes that have real prototypes there; otherwise only the newest block, from the
        current task's classes). ``last_adapter``: no block past it is filled (E1, untrained adapters)."""
        last = upto_task if last_adapter is None else min(upto_task, last_adapter)
        for i in range(upto_task):
            targets = range(i + 1, last + 1) if recalc_sim else [upto_task] if upto_task <= last else []
            for k in targets:
                newer = [c for t in range(k if recalc_sim else upto_task, upto_task + 1)
                         for c in self.task_classes[t]]
                self.protos[k, self.task_classes[i]] = complement(self.protos, self.task_classes[i], newer, i, k, tau)

    def block_weights(self, upto_task: int, alpha: float, beta: float) -> torch.Tensor:
        """``(S_live, C)``: lambda of each live block for each class: 1 in the class's own adapter subspace,
        alpha / T in the other adapters' (T = ``upto_task``), beta for the PTM."""
        own = self.task_of.unsqueeze(0) == torch.arange(upto_task + 1, device=self.task_of.device).unsqueeze(1)
        other = alpha / upto_task if upto_task > 0 else 0.0  # at T = 0 there is no other adapter
        lam = torch.where(own, torch.ones((), device=own.device), torch.full((), other, device=own.device))
        if self.use_ptm:
            lam = torch.cat([torch.full((1, lam.shape[1]), float(beta), device=lam.device), lam])
        return lam

    def forward(self, features: torch.Tensor, upto_task: int, reweight: bool, alpha: float,
                beta: float) -> torch.Tensor:
        """Logits ``(n, C)`` of concatenated features ``(n, S_live * D)`` in :meth:`subspaces` order: the
        reweighted sum of per-block cosines, or (``reweight`` off) one cosine over the concatenation."""
        live = self.subspaces(upto_task)
        weights = self.protos[live].to(features.dtype)
        blocks = features.reshape(len(features), len(live), -1)
        if not reweight:
            return concat_cosine(blocks, weights)
        lam = self.block_weights(upto_task, alpha, beta).to(features)
        return torch.einsum("nsc,sc->nc", block_cosines(blocks, weights), lam)
