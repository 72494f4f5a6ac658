"""The learner shared by L2P, DualPrompt and S-Prompt++: a pool of prompts with keys, each sample using the
prompts whose keys best match its query (the frozen backbone's class token), one linear head over all classes,
trained task by task with a masked cross-entropy and a pull term on the selected keys
(docs/algorithm.md#baselines). There is no task-identity stage and no TAP: a task is ``train -> evaluate``.

The three methods differ in how the selected prompts enter the ViT (prompt tokens for L2P, prefixes for the
other two, plus DualPrompt's shared G-prompt) and in their settings (``norga.methods.schemas``). Frozen in
effect, as in the reference: a fresh Adam every task, and the masked loss and the selection give the prompts,
keys and head rows of finished tasks exactly zero gradient, so they never move.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from norga.engine.distributed import all_gather_cat, data_parallel
from norga.engine.evaluate import majority_selection
from norga.engine.loops import masked_logits, shard_cross_entropy, shard_mean
from norga.engine.optim import BY_GLOBAL_BATCH
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner, tensor_digest
from norga.models.keys import PromptKeys
from norga.models.vit import build_head, head_geometry


class KeyQueryLearner(Learner):
    """Subclasses build ``self.prompts`` in :meth:`build_prompts` and define :meth:`prompted_features` and
    :meth:`prompt_tensors`."""

    takes_batchwise_prompt = True
    lr_scaling = BY_GLOBAL_BATCH

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        self.dim, self.heads, self.head_dim = head_geometry(backbone)
        self.top_k = int(m.top_k)
        self.pool_size = int(m.pool_size or benchmark.num_tasks)
        if self.top_k > self.pool_size:
            raise ValueError(f"method.top_k={self.top_k} is larger than the pool (method.pool_size="
                             f"{self.pool_size}): choose top_k <= pool_size")
        if m.prompt_mask and self.pool_size < benchmark.num_tasks * self.top_k:
            raise ValueError(f"method.prompt_mask trains prompts t*top_k..(t+1)*top_k-1 on task t: the pool needs "
                             f"{benchmark.num_tasks} tasks x {self.top_k} = {benchmark.num_tasks * self.top_k} "
                             f"prompts, method.pool_size is {self.pool_size}")
        self.keys = PromptKeys(self.pool_size, self.dim).to(device)
        self.build_prompts()
        self.head = build_head(self.dim, benchmark.num_classes,
                               cfg.backbone.get("reference_fc_norm", False)).to(device)
        self.batchwise_prompt = bool(m.batchwise_prompt)
        # the reference prefix layout mixes prompts by position: keep the reference's top-k order there
        self.ordered_selection = m.get("prefix_layout") == "reference"

    def build_prompts(self) -> None:
        raise NotImplementedError

    def prompted_features(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` with the prompts ``ids (B, k)``."""
        raise NotImplementedError

    def prompt_tensors(self, ids: tuple[int, ...]) -> list[torch.Tensor | None]:
        """Every tensor the features under selection ``ids`` depend on (for the evaluation cache)."""
        raise NotImplementedError

    def copy_prompts(self, src: slice, dst: slice) -> None:
        """Initialise pool slots ``dst`` from slots ``src`` (``shared_prompt_pool``)."""
        raise NotImplementedError

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [Stage("train"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"prompts": self.prompts, "prompt_keys": self.keys, "head": self.head}

    def select(self, query: torch.Tensor, upto_task: int) -> torch.Tensor:
        allowed = (upto_task + 1) * self.top_k if self.method.match_seen_keys else None
        return self.keys.match(query, self.top_k, allowed, self.ordered_selection)

    def selected_task(self, selection: torch.Tensor | None) -> torch.Tensor | None:
        # with the prompt mask, slots t*k..(t+1)*k-1 are task t's: the selection names a task
        if selection is None or not self.method.prompt_mask:
            return None
        return selection[:, 0] // self.top_k

    def features(self, x, selection, query) -> torch.Tensor:
        return self.prompted_features(x, selection)

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        return tensor_digest(*self.prompt_tensors(selection))

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        # over all classes, as the reference
        # (docs/algorithm.md#d10-untrained-keys-and-unseen-classes-at-test-methodmatch_seen_keys)
        return self.head(features)

    # ---- training ----------------------------------------------------------------------------------------
    def task_slots(self, task: int) -> slice:
        return slice(task * self.top_k, (task + 1) * self.top_k)

    def train_selection(self, query: torch.Tensor, task: int) -> torch.Tensor:
        """The prompts a training batch uses: the task's own slots with the prompt mask, else each sample's
        best keys, or (``train_batchwise``) the global batch's most frequent ones for every sample."""
        b = len(query)
        if self.method.prompt_mask:
            slots = torch.arange(self.task_slots(task).start, self.task_slots(task).stop, device=query.device)
            return slots.expand(b, -1)
        ids = self.keys.match(query, self.top_k, ordered=self.ordered_selection)
        if self.method.train_batchwise:
            # the majority of the global batch (every rank gathers every rank's matches)
            ids = majority_selection(all_gather_cat(ids), self.ordered_selection).to(query.device).expand(b, -1)
        return ids

    def train_loss(self, task: int):
        """The loss of a training batch of task ``task``: cross-entropy over the task's classes, minus
        ``pull_coeff`` times the mean summed cosine between the queries and their selected keys."""
        allowed = self.benchmark.class_mask(task)
        pull = float(self.method.pull_coeff)

        def loss_fn(x, y):
            query = self.backbone_features(x)
            ids = self.train_selection(query, task)
            loss = shard_cross_entropy(masked_logits(self.head(self.prompted_features(x, ids)), allowed), y)
            if pull:
                loss = loss - pull * shard_mean(self.keys.pull(query, ids))
            return loss

        return loss_fn

    def trained_modules(self) -> dict[str, nn.Module]:
        """The modules the training stage optimises (the keys only while the pull term is on)."""
        if self.method.pull_coeff:
            return self.modules()
        return {k: v for k, v in self.modules().items() if k != "prompt_keys"}

    def benchmark_step(self, task: int):
        return self.train_loss(task), [p for m in self.trained_modules().values() for p in m.parameters()]

    def schedule(self, task: int):
        scheduler = self.cfg.scheduler
        if scheduler.get("first_task_only") and task > 0:
            # the reference's defect D3: its scheduler was bound to task 0's optimiser
            return {"name": "constant"}
        return scheduler

    def train(self, ctx: StageContext) -> None:
        m, task = self.method, ctx.task
        if task > 0 and ctx.start_epoch == 0 and m.shared_prompt_pool:
            self.copy_prompts(self.task_slots(task - 1), self.task_slots(task))
        trained = self.trained_modules()
        params = [p for module in trained.values() for p in module.parameters()]
        for module in self.modules().values():
            module.train()
        step = data_parallel(trained, self.train_loss(task))
        self.train_epochs(ctx, step, params, desc=m.name, schedule=self.schedule(task))
