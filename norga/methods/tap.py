"""Task-adaptive prediction (TAP): re-training a head on features sampled from per-class Gaussians
(:mod:`norga.methods.statistics`), after each task, so that the classes of all tasks are calibrated against
each other (docs/algorithm.md#task-adaptive-prediction-tap)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from norga.engine.loops import masked_logits
from norga.engine.stages import StageContext
from norga.methods.statistics import ClassStatistics

if TYPE_CHECKING:
    from norga.methods.base import Learner


def train_on_statistics(
    learner: Learner,
    ctx: StageContext,
    model: nn.Module,
    stats: ClassStatistics,
    classes: list[int],
    steps: int,
    n_per_class: int,
    epochs: int,
    lr: float,
    allowed: torch.Tensor,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    cosine_period: int | None = None,
    mean_scale: Mapping[int, float] | None = None,
) -> int:
    """Task-adaptive prediction: train ``model`` on features sampled from the class Gaussians, through the
    learner's epoch loop (so capped, seeded, resumable like every stage); returns the epoch count.

    Each epoch samples ``n_per_class`` features for every class in ``classes``, shuffles them, and takes
    ``steps`` SGD steps of ``n_per_class`` samples each (the reference: steps = number of classes of the
    earlier tasks; ``train.max_batches`` does not apply), logits restricted to ``allowed``; the lr (scaled as
    the learner declares for the stage) follows torch's cosine annealing over the epochs, no clipping.
    ``cosine_period``: the annealing's T_max in epochs when not the epoch count (torch's schedule then rises
    again after it, TUNA's reference); ``mean_scale``: class -> factor on its mean before sampling.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    device = learner.device

    def batches(generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # drawn from the RNGs the epoch's seed set
        x, y = stats.sample(classes, n_per_class, mean_scale)
        order = torch.randperm(len(y))
        x, y = x[order].to(device), y[order].to(device)
        chunks = [(x[i * n_per_class:(i + 1) * n_per_class], y[i * n_per_class:(i + 1) * n_per_class])
                  for i in range(steps)]
        return [(xb, yb) for xb, yb in chunks if len(yb)]

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(masked_logits(model(x), allowed), y)

    return learner.train_epochs(
        ctx, loss_fn, params, desc=ctx.stage, batches=batches, epochs=epochs, lr=lr,
        schedule=lambda optimizer, count: torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=count if cosine_period is None else cosine_period),
        optimizer=partial(torch.optim.SGD, momentum=momentum, weight_decay=weight_decay), clip_grad=None,
        limit_batches=False)
