"""The loops every learner uses: the epoch loop of every training stage (:func:`run_epochs`) and its step loop
(:func:`train_epoch`), feature extraction, masked logits, bf16 autocast."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from norga.engine.distributed import global_count, local_loss_weight
from norga.engine.faults import maybe_crash
from norga.engine.optim import LrScaling, param_groups, set_epoch_lr
from norga.engine.stages import StageContext
from norga.errors import NorgaError

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: an epoch's batches ``(x, y)``, given the generator its epoch was seeded with (``StageContext.seed_epoch``)
Batches = Callable[[torch.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]]
#: a per-epoch schedule (``{"name": ..., ...}``, :func:`norga.engine.optim.lr_factor`), or a factory of a torch
#: lr scheduler ``(optimizer, epochs) -> scheduler`` stepped after every epoch (its state is checkpointed)
Schedule = Mapping | Callable[[torch.optim.Optimizer, int], Any] | None


class NonFiniteLossError(FloatingPointError, NorgaError):
    """A loss became NaN or infinite; says where, so the run can be inspected or resumed with changes."""

    def __init__(self, where: str, step: int, value: float) -> None:
        super().__init__(f"non-finite loss {value} at {where}, step {step}; lower the learning rate or check "
                         "the data, then resume (resume=true) from the last checkpoint")
        self.where, self.step, self.value = where, step, value


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked (fp32 master weights stay fp32); a no-op for fp32/tf32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits of classes outside the boolean ``allowed`` (C,) set to -inf."""
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


def shard_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over this process's shard, weighted so that DDP's average over the ranks is the mean
    over the global batch (:func:`~norga.engine.distributed.local_loss_weight`). An empty shard (a global
    batch smaller than the process count) gives a zero loss that is still connected to the graph, so the
    rank takes part in the gradient reduction."""
    n = len(labels)
    weight = local_loss_weight(n, global_count(n))
    if n == 0:
        return logits.sum() * 0.0
    return weight * F.cross_entropy(logits, labels)


def shard_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of per-sample ``values`` over the global batch, from this process's shard (weighted like
    :func:`shard_cross_entropy`; zero, still connected to the graph, on an empty shard)."""
    n = len(values)
    weight = local_loss_weight(n, global_count(n))
    if n == 0:
        return values.sum() * 0.0
    return weight * values.mean()


def run_epochs(
    ctx: StageContext,
    step: LossFn,
    batches: Batches,
    groups: Sequence[tuple[Sequence[nn.Parameter], float]],
    *,
    epochs: int,
    lr: float,
    lr_scaling: LrScaling,
    global_batch_size: int,
    optimizer: Callable[[list[dict]], torch.optim.Optimizer],
    schedule: Schedule,
    clip_grad: float | None,
    device: torch.device,
    desc: str,
    limit_batches: bool = True,
    before_last_checkpoint: Callable[[], None] | None = None,
) -> int:
    """The epoch loop of a training stage; returns its epoch count (``epochs`` capped by ``train.max_epochs``).

    The stage supplies its loss (``step``, ``(x, y) -> loss``), its batches, its parameters as ``(params,
    factor)`` groups, its configured ``lr`` with the learner's :class:`~norga.engine.optim.LrScaling` (applied
    here, once), an optimiser factory (``param groups -> optimizer``) and its ``schedule``. The loop owns the
    rest: the optimiser (lr and ``base_lr`` of every group) and scheduler, registered with ``ctx.attach`` (which
    restores them on resume); from ``ctx.start_epoch`` to the capped count, each epoch seeded by
    ``ctx.seed_epoch``, its lr set by the schedule, crash points ``<stage>/epoch<e>`` and
    ``<stage>/epoch<e>/step<s>``, ``train.max_batches`` (unless ``limit_batches`` is False), non-finite loss
    checks, gradient clipping at ``clip_grad``, a progress bar or one log line, and ``ctx.epoch_end`` (which
    logs and checkpoints). ``before_last_checkpoint`` runs just before the last epoch's checkpoint.
    """
    epochs = ctx.epochs(epochs)
    built = optimizer(param_groups(groups, lr_scaling.apply(lr, global_batch_size)))
    per_epoch = schedule if schedule is None or isinstance(schedule, Mapping) else None
    scheduler = None if per_epoch is not None or schedule is None else schedule(built, epochs)
    ctx.attach(built, scheduler)
    params = [p for group in built.param_groups for p in group["params"]]
    for epoch in range(ctx.start_epoch, epochs):
        maybe_crash(f"{ctx.point}/epoch{epoch}")
        started = time.perf_counter()
        generator = ctx.seed_epoch(epoch)
        if per_epoch is not None:
            lr_now = set_epoch_lr(built, per_epoch, epoch, epochs)
        else:
            lr_now = built.param_groups[0]["lr"]
        where = f"task {ctx.task} {desc} epoch {epoch + 1}/{epochs}"
        loss = train_epoch(step, batches(generator), built, params, device, clip_grad, where,
                           ctx.max_batches if limit_batches else None, ctx.progress,
                           point=f"{ctx.point}/epoch{epoch}")
        if scheduler is not None:
            scheduler.step()
        if not ctx.progress:
            log.info("%s: loss %.4f | lr %.3g | %.1fs", where, loss, lr_now, time.perf_counter() - started)
        if epoch == epochs - 1 and before_last_checkpoint is not None:
            before_last_checkpoint()
        ctx.epoch_end(epoch, {"loss": loss, "lr": lr_now})
    return epochs


def train_epoch(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    device: torch.device,
    clip_grad: float | None,
    where: str,
    max_batches: int | None = None,
    progress: bool = True,
    point: str = "",
) -> float:
    """One epoch of ``loss_fn(x, y)`` steps with gradient clipping; returns the mean loss.

    ``point`` names this epoch for crash drills (:mod:`norga.engine.faults`).
    """
    total, count = 0.0, 0
    batches = tqdm(loader, desc=where, leave=False, disable=not progress)
    for step, (x, y) in enumerate(batches):
        if max_batches is not None and step >= max_batches:
            break
        maybe_crash(f"{point}/step{step}")
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(x, y)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(where, step, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
        total += value * len(y)
        count += len(y)
        batches.set_postfix(loss=f"{value:.4f}")
    return total / max(count, 1)


@torch.no_grad()
def extract_features(
    fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device,
    desc: str,
    max_batches: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(x)`` for every batch, concatenated on the CPU in fp32, with the labels."""
    feats, labels = [], []
    for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress)):
        if max_batches is not None and step >= max_batches:
            break
        feats.append(fn(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
