"""Task-adaptive prediction (TAP): re-training a head on features sampled from per-class Gaussians
(:mod:`norga.methods.statistics`), after each task, so that the classes of all tasks are calibrated against
each other (docs/algorithm.md#task-adaptive-prediction-tap)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from norga.engine.faults import maybe_crash
from norga.engine.loops import NonFiniteLossError, masked_logits
from norga.engine.stages import StageContext
from norga.methods.statistics import ClassStatistics


def train_on_statistics(
    model: nn.Module,
    stats: ClassStatistics,
    classes: list[int],
    steps: int,
    n_per_class: int,
    epochs: int,
    lr: float,
    allowed: torch.Tensor,
    device: torch.device,
    ctx: StageContext,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> None:
    """Task-adaptive prediction: train ``model`` on features sampled from the class Gaussians.

    Each epoch samples ``n_per_class`` features for every class in ``classes``, shuffles them, and takes
    ``steps`` SGD steps of ``n_per_class`` samples each (the reference: steps = number of classes of the
    earlier tasks), logits restricted to ``allowed``; cosine annealing over the epochs.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    ctx.attach(optimizer, schedule)
    model.train()
    where = f"task {ctx.task + 1} {ctx.stage}"
    for epoch in tqdm(range(ctx.start_epoch, epochs), desc=where, leave=False, disable=not progress):
        maybe_crash(f"{ctx.point}/epoch{epoch}")
        ctx.seed_epoch(epoch)
        x, y = stats.sample(classes, n_per_class)
        order = torch.randperm(len(y))
        x, y = x[order].to(device), y[order].to(device)
        total, count = 0.0, 0
        for step in range(steps):
            xb = x[step * n_per_class:(step + 1) * n_per_class]
            yb = y[step * n_per_class:(step + 1) * n_per_class]
            if len(yb) == 0:
                break
            loss = F.cross_entropy(masked_logits(model(xb), allowed), yb)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{where} epoch {epoch}", step, value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + value * len(yb), count + len(yb)
        lr_now = optimizer.param_groups[0]["lr"]
        schedule.step()
        ctx.epoch_end(epoch, {"loss": total / max(count, 1), "lr": lr_now})
