"""Optimisers, learning-rate scaling rules and per-epoch learning-rate schedules.

A learner declares how each training stage's configured lr follows the batch size (:class:`LrScaling`,
``Learner.lr_scaling``); the epoch loop (:func:`norga.engine.loops.run_epochs`) applies it, once, when it
builds the stage's optimiser. Where an lr scales, it scales with the GLOBAL batch size (the reference scales
by the per-GPU batch, so the GPU count changed the optimisation; docs/algorithm.md#d4-learning-rate-and-gpu-count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

SCHEDULES = ("constant", "step", "multistep", "cosine", "coda_cosine")


def scaled_lr(lr: float, global_batch_size: int) -> float:
    return lr * global_batch_size / 256.0


@dataclass(frozen=True)
class LrScaling:
    """How a stage's configured learning rate follows the global batch size: ``lr * batch / per_batch``, or
    the configured lr unchanged (``per_batch`` None)."""

    per_batch: int | None

    def apply(self, lr: float, global_batch_size: int) -> float:
        return float(lr) if self.per_batch is None else lr * global_batch_size / float(self.per_batch)

    def __str__(self) -> str:
        return "as configured" if self.per_batch is None else f"x global batch / {self.per_batch}"


#: lr x global batch / 256 (the prompt methods as their papers run them; each method declares its rule)
BY_GLOBAL_BATCH = LrScaling(256)
#: the configured lr, whatever the batch (stages whose reference does not scale; the method declares it)
UNSCALED = LrScaling(None)


def param_groups(groups: Sequence[tuple[Sequence[torch.nn.Parameter], float]], lr: float) -> list[dict]:
    """Optimiser parameter groups from ``(params, factor)`` pairs: lr ``lr * factor`` (``lr`` itself for
    factor 1.0), recorded as ``base_lr`` too (the schedule's reference); empty groups are left out."""
    return [{"params": list(params), "lr": lr * factor, "base_lr": lr * factor} for params, factor in groups
            if len(params)]


def lr_factor(schedule: DictConfig | dict, epoch: int, epochs: int) -> float:
    """Multiplier of the base lr in ``epoch`` (0-based) of a stage with ``epochs`` epochs.

    ``step``: ``gamma ** (epoch // step_epochs)``; ``multistep``: ``gamma ** (number of milestones <= epoch)``
    (torch's MultiStepLR stepped once per epoch); ``cosine``: half-cosine from 1 to ``min_lr / lr`` over
    the stage (returned relative to 1; the caller applies ``min_factor``); ``coda_cosine``: the schedule
    ``cos(99 pi e / (200 (epochs - 1)))``, from 1 at the first epoch to cos(0.495 pi) ~ 0.016 at the last.
    """
    name = schedule["name"]
    if name == "constant":
        return 1.0
    if name == "step":
        return schedule["gamma"] ** (epoch // schedule["step_epochs"])
    if name == "multistep":
        return schedule["gamma"] ** sum(1 for m in schedule["milestones"] if m <= epoch)
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    if name == "coda_cosine":
        return math.cos(99 * math.pi * epoch / (200 * max(1, epochs - 1)))
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULES)}")


def set_epoch_lr(optimizer: torch.optim.Optimizer, schedule: DictConfig | dict, epoch: int, epochs: int) -> float:
    """Set every param group's lr for ``epoch`` from its ``base_lr``; returns the first group's lr."""
    factor = lr_factor(schedule, epoch, epochs)
    missing = [i for i, group in enumerate(optimizer.param_groups) if "base_lr" not in group]
    if missing:
        raise ValueError(f"param groups {missing} have no base_lr, so the schedule has nothing to scale: build the "
                         "optimiser with norga.engine.optim.param_groups (the epoch loop does)")
    min_lr = schedule.get("min_lr", 0.0) if schedule["name"] == "cosine" else 0.0
    for group in optimizer.param_groups:
        group["lr"] = min_lr + (group["base_lr"] - min_lr) * factor if min_lr else group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
