"""CODA-Prompt: prefix prompts assembled per sample from a pool of components weighted by query-key attention
(:class:`~norga.models.coda.CodaPrompt`), one linear head over all classes, trained task by task with a
cross-entropy over the current task's classes (docs/algorithm.md#coda-prompt). A task is ``train -> evaluate``.

Nothing is selected: a sample's prompt is a continuous function of its query (the frozen backbone's class
token), so :meth:`select` gives None and prompted features are never cached (the engine caches the query).
Frozen in effect: earlier tasks' components enter the forward detached and their head rows are masked out
of the loss, so with a fresh Adam every task (no weight decay) they never move.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from norga.engine.distributed import data_parallel
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import BY_GLOBAL_BATCH
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner
from norga.models.attention import configure_prefix_attention
from norga.models.coda import CodaPrompt
from norga.models.vit import check_layers, head_geometry, init_linear

log = logging.getLogger(__name__)


class CODAPrompt(Learner):
    name = "coda"
    lr_scaling = BY_GLOBAL_BATCH

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        self.dim, self.heads, _ = head_geometry(backbone)
        layers = check_layers("method.prompt_layers", m.prompt_layers, backbone)
        num_tasks = benchmark.num_tasks
        if m.pool_size % num_tasks:
            log.warning("method.pool_size=%d does not divide into %d tasks: the last %d components are never "
                        "used", m.pool_size, num_tasks, m.pool_size % num_tasks)
        self.prompt = CodaPrompt(layers, int(m.pool_size), num_tasks, int(m.prompt_length), self.dim,
                                 self.heads).to(device)
        self.head = nn.Linear(self.dim, benchmark.num_classes).to(device)
        init_linear(self.head)
        self.ortho_weight = float(m.ortho_weight)
        configure_prefix_attention(self.backbone, cfg.train.attention, device)

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [Stage("train"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"prompt": self.prompt, "head": self.head}

    def features(self, x, selection, query) -> torch.Tensor:
        if self.prompt.tasks_started == 0:
            raise RuntimeError("CODA-Prompt has no components before its first task is trained")
        # every task started so far: after task t's training that is tasks 0..t
        return self.prompted_features(x, query, self.prompt.tasks_started - 1)

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        # over the classes seen so far, as the authors evaluate (unseen classes' rows are still at init)
        return masked_logits(self.head(features), self.benchmark.seen_mask(upto_task))

    # ---- forward -----------------------------------------------------------------------------------------
    def prompted_features(self, x: torch.Tensor, query: torch.Tensor, task: int, train: bool = False) -> torch.Tensor:
        """Features of ``x`` with the prompts its ``query`` assembles from the components of tasks ``0..task``
        (with ``train``: earlier tasks' detached). The weights are formed in fp32, outside autocast."""
        prefixes = self.prompt.prefixes(query, task, train)
        with self.amp():
            return self._vit(self.backbone, x, prefixes).float()

    # ---- training ----------------------------------------------------------------------------------------
    def train_loss(self, task: int):
        """Cross-entropy over task ``task``'s classes plus ``ortho_weight`` times the orthogonality penalty."""
        allowed = self.benchmark.class_mask(task)
        ortho = self.ortho_weight

        def loss_fn(x, y):
            query = self.backbone_features(x)
            logits = self.head(self.prompted_features(x, query, task, train=True))
            loss = shard_cross_entropy(masked_logits(logits, allowed), y)
            if ortho:
                # the same on every rank, so DDP's average of its gradient is the gradient itself
                loss = loss + ortho * self.prompt.orthogonality(task)
            return loss

        return loss_fn

    def benchmark_step(self, task: int):
        if int(self.prompt.started) <= task:  # a fresh learner: draw the task's components first
            self.prompt.start_task(task, torch.Generator().manual_seed(0))
        return self.train_loss(task), [p for m in self.modules().values() for p in m.parameters()]

    def train(self, ctx: StageContext) -> None:
        task = ctx.task
        if ctx.start_epoch == 0:
            # the task's slice is drawn here, from the run seed; resuming inside the stage finds it in the
            # checkpoint (the prompt module's state), so it is never drawn twice differently
            self.prompt.start_task(task, ctx.seed_epoch(0, stage="train/components"))
        params = [p for module in self.modules().values() for p in module.parameters()]
        for module in self.modules().values():
            module.train()
        step = data_parallel(self.modules(), self.train_loss(task))
        self.train_epochs(ctx, step, params, desc="coda")
