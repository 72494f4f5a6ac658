"""MOS's adapters (docs/algorithm.md#mos): one running AdaptFormer set theta that trains on every task and is never
re-initialised, a frozen snapshot Theta_t of it after each task t, and the prefix sums S_t = sum_{k<=t} Theta_k
recorded at that moment.

The merge ("pull") moves a set toward the mean of the snapshots before task ``count``:

    A <- (1 - m) A + m S_{count-1} / count        (m = adapter_momentum; the identity when count = 0 or m = 0)

It rewrites the parameters' data in place, outside autograd, as the authors' code does. :meth:`pull_per_block`
applies it once before each block's adapter runs, to the whole set (the authors' per-block loop: block l sees the
set after l + 1 pulls, and one forward leaves it pulled 12 times).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from norga.models.peft import AdapterBank, AdapterSet


class SnapshotAdapters(nn.Module):
    """``running`` (theta), ``snapshots.sets[t]`` (Theta_t) and ``sums.sets[t]`` (S_t) for the tasks filled so far
    (``filled``). Both banks hold ``num_tasks`` sets from the start, so a checkpoint always has the same keys."""

    def __init__(self, dim: int, depth: int, num_tasks: int, bottleneck: int, dropout: float, scale: float,
                 momentum: float) -> None:
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError(f"the adapter momentum m must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.running = AdapterSet(dim, depth, bottleneck, dropout, scale)
        self.snapshots = AdapterBank(dim, depth, bottleneck, dropout, scale)
        self.sums = AdapterBank(dim, depth, bottleneck, dropout, scale)
        for _ in range(num_tasks):
            self.snapshots.add()
            self.sums.add()
        self.snapshots.requires_grad_(False)
        self.sums.requires_grad_(False)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def snapshot(self, task: int) -> None:
        """Theta_task <- theta and S_task <- S_{task-1} + theta (S_0 = Theta_0); rerunning it gives the same."""
        if task > int(self.filled):
            raise ValueError(f"snapshot of task {task} before task {int(self.filled)}'s")
        snap, total = self.snapshots.sets[task], self.sums.sets[task]
        earlier = list(self.sums.sets[task - 1].parameters()) if task else None
        for i, (p, s, t) in enumerate(zip(self.running.parameters(), snap.parameters(), total.parameters())):
            s.copy_(p)
            t.copy_(p if earlier is None else earlier[i] + p)
        self.filled.fill_(task + 1)

    @torch.no_grad()
    def pull(self, target: AdapterSet, count: int) -> None:
        """``target <- (1 - m) target + m S_{count-1} / count`` on every tensor, in place (no autograd)."""
        m = self.momentum
        if count == 0 or m == 0:
            return
        for p, s in zip(target.parameters(), self.sums.sets[count - 1].parameters(), strict=True):
            # the authors' expression, in their order of operations
            p.data.copy_((1 - m) * p.data + m * s.data / count)

    @contextmanager
    def pull_per_block(self, target: AdapterSet, count: int, enabled: bool = True) -> Iterator[None]:
        """Within the block: every forward through ``target`` pulls the whole set once before each block's adapter
        runs (the authors' per-block loop); nothing when ``enabled`` is false or the pull is the identity."""
        if not enabled or count == 0 or self.momentum == 0:
            yield
            return
        hooks = [a.register_forward_pre_hook(lambda *_: self.pull(target, count)) for a in target.adapters.values()]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
