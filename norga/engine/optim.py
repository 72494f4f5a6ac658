"""Optimisers and per-epoch learning-rate schedules.

Learning rates are scaled by the GLOBAL batch size / 256 (the reference scales by the per-GPU batch, so the
GPU count changed the optimisation; docs/algorithm.md#d4-learning-rate-and-gpu-count).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

SCHEDULES = ("constant", "step", "cosine", "coda_cosine")


def scaled_lr(lr: float, global_batch_size: int) -> float:
    return lr * global_batch_size / 256.0


def lr_factor(schedule: DictConfig | dict, epoch: int, epochs: int) -> float:
    """Multiplier of the base lr in ``epoch`` (0-based) of a stage with ``epochs`` epochs.

    ``step``: ``gamma ** (epoch // step_epochs)``; ``cosine``: half-cosine from 1 to ``min_lr / lr`` over
    the stage (returned relative to 1; the caller applies ``min_factor``); ``coda_cosine``: the schedule
    ``cos(99 pi e / (200 (epochs - 1)))``, from 1 at the first epoch to cos(0.495 pi) ~ 0.016 at the last.
    """
    name = schedule["name"]
    if name == "constant":
        return 1.0
    if name == "step":
        return schedule["gamma"] ** (epoch // schedule["step_epochs"])
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    if name == "coda_cosine":
        return math.cos(99 * math.pi * epoch / (200 * max(1, epochs - 1)))
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULES)}")


def set_epoch_lr(optimizer: torch.optim.Optimizer, schedule: DictConfig | dict, epoch: int, epochs: int) -> float:
    """Set every param group's lr for ``epoch`` from its ``base_lr``; returns the first group's lr."""
    factor = lr_factor(schedule, epoch, epochs)
    min_lr = schedule.get("min_lr", 0.0) if schedule["name"] == "cosine" else 0.0
    for group in optimizer.param_groups:
        group["lr"] = min_lr + (group["base_lr"] - min_lr) * factor if min_lr else group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def build_optimizer(
    optimizer_cfg: DictConfig, groups: Iterable[tuple[list[torch.nn.Parameter], float]]
) -> torch.optim.Optimizer:
    """Instantiate the configured optimizer (a ``_partial_`` node) over ``(params, lr)`` groups."""
    param_groups = [{"params": params, "lr": lr, "base_lr": lr} for params, lr in groups if params]
    factory: Callable[..., torch.optim.Optimizer] = instantiate(optimizer_cfg.partial)
    return factory(param_groups)
