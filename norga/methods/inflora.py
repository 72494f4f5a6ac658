"""InfLoRA (Liang and Li, CVPR 2024): per task a LoRA branch on k and v of every block whose down-projection
D_t is designed, before the task, from the new task's input covariance projected off the subspace earlier
tasks use; only its up-projection U_t and the task's head train; after the task a DualGPM memory of that
subspace grows (docs/algorithm.md#inflora). A task is ``design -> train -> memory -> evaluate``:

* ``design``: one no-grad pass over the task's augmented, shuffled training images with branches 0..t-1;
  per LoRA'd block C = mean over all tokens of x x^T (x: the LN1 output, the attention input); D_t from the
  SVD of C, C - P C (``remove``) or P C (``retain``), divided by sqrt(3), the same for k and v;
* ``train``: cross-entropy of head t over task t's classes (labels shifted), through branches 0..t;
* ``memory``: the covariance again with the trained U_t, then the DualGPM (or GPM) update
  (:mod:`norga.methods.inflora_memory`); with ``method.merge_old`` branch t is then merged into the frozen
  weights (re-merged after loading a checkpoint: the backbone is never checkpointed).

Inference: one pass with every trained branch, the heads of the seen tasks concatenated, argmax. The backbone
changes every task, so the evaluator's query is that pass itself (``features_need_images = False``), cached
while no LoRA tensor changes: each test set costs one ViT pass per evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from norga.engine.distributed import data_parallel, is_distributed
from norga.engine.loops import shard_cross_entropy
from norga.engine.optim import UNSCALED
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner, tensor_digest
from norga.methods.inflora_memory import SubspaceMemory, design_down, threshold
from norga.models.peft import LoRALayers, compose, peft_blocks
from norga.models.vit import check_layers

log = logging.getLogger(__name__)

TARGETS = ("k", "v")


class TaskBranches(nn.Module):
    """One :class:`LoRALayers` (k, v of the chosen blocks) per task, allocated up front as the authors' pool;
    ``merged`` counts the leading tasks whose branches live in the backbone's weights."""

    def __init__(self, vit, layers: list[int], rank: int, num_tasks: int) -> None:
        super().__init__()
        self.tasks = nn.ModuleList([LoRALayers(vit, layers, TARGETS, rank, down_init="zeros")
                                    for _ in range(num_tasks)])
        self.register_buffer("merged", torch.zeros((), dtype=torch.long))
        self.requires_grad_(False)

    def ups(self, task: int) -> list[nn.Parameter]:
        return [lora.up for per in self.tasks[task].loras.values() for lora in per.values()]

    def plan(self, upto: int) -> dict:
        """What a pass attaches with branches ``0..upto`` (merged ones are in the weights already)."""
        return compose(*(self.tasks[s].plan() for s in range(upto + 1)))

    def merge_upto(self, vit, count: int) -> None:
        """Merge the branches of tasks ``merged..count-1`` into ``vit``, in task order."""
        for s in range(int(self.merged), count):
            self.tasks[s].merge(vit)
            self.merged += 1

    def unmerge_all(self) -> None:
        for s in reversed(range(int(self.merged))):
            self.tasks[s].unmerge()
        self.merged.zero_()


class InfLoRA(Learner):
    """InfLoRA with the authors' DualGPM memory (or GPM), per-task heads and no classifier alignment."""

    name = "inflora"
    # the authors' Adam lr 5e-4 at batch 128, whatever the batch
    lr_scaling = UNSCALED
    features_need_images = False  # the query is the LoRA'd feature itself (see the module docstring)

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        depth = len(peft_blocks(backbone))
        layers = list(range(depth)) if m.lora_layers is None else m.lora_layers
        self.layers = check_layers("method.lora_layers", layers, backbone)
        if not self.layers:
            raise ValueError("method.lora_layers lists no block: InfLoRA needs at least one LoRA'd block")
        self.rank = int(m.rank)
        dim = backbone.embed_dim
        if not 1 <= self.rank <= dim:
            raise ValueError(f"method.rank must be in 1..{dim} (the input width), got {self.rank}")
        if not 0 <= m.lamb <= m.lame <= 1:
            raise ValueError(f"the DualGPM thresholds need 0 <= method.lamb <= method.lame <= 1, got lamb "
                             f"{m.lamb}, lame {m.lame}")
        self.lamb, self.lame = float(m.lamb), float(m.lame)
        self.merge_old = bool(m.merge_old)
        num_tasks = benchmark.num_tasks
        self.branches = TaskBranches(self.backbone, self.layers, self.rank, num_tasks).to(device)
        # per-task heads sized by each task (the authors assume equal tasks; any split works here)
        self.heads = nn.ModuleList([nn.Linear(dim, len(c)) for c in benchmark.task_classes]).to(device)
        self.heads.requires_grad_(False)
        # on the CPU: every decomposition runs there, in float64
        self.memory = SubspaceMemory(len(self.layers), dim, str(m.energy_on), str(m.memory))
        self.head_lr = None if m.head_lr is None else float(m.head_lr)
        self.sgd = bool(m.sgd)

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [Stage("design"), Stage("train"), Stage("memory"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"branches": self.branches, "heads": self.heads, "memory": self.memory}

    def load_state_dict(self, state: dict) -> None:
        # the backbone is not checkpointed: take merged branches out, load, merge the loaded ones in again
        self.branches.unmerge_all()
        super().load_state_dict(state)
        count = int(self.branches.merged)
        self.branches.merged.zero_()
        self.branches.merge_upto(self.backbone, count)

    @property
    def trained(self) -> int:
        """Tasks finished (their memory update done)."""
        return int(self.memory.tasks)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The features with every finished task's branches (before the first: the backbone's own)."""
        with torch.no_grad():
            return self.lora_features(x, self.trained - 1)

    def query_version(self) -> Hashable:
        done = self.trained
        tensors = [p for s in range(done) for p in self.branches.tasks[s].parameters()]
        return done, int(self.branches.merged), tensor_digest(*tensors)

    def features(self, x, selection, query) -> torch.Tensor:
        return query

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        """The heads of tasks ``0..upto_task`` side by side, at their classes' columns; unseen classes -inf."""
        out = features.new_full((len(features), self.benchmark.num_classes), float("-inf"))
        for s in range(upto_task + 1):
            out[:, self.benchmark.task_classes[s]] = self.heads[s](features).to(out)
        return out

    # ---- forward -----------------------------------------------------------------------------------------
    def lora_features(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Features of ``x`` with the branches of tasks ``0..upto`` (fp32)."""
        with self.amp():
            return self._vit(self.backbone, x, peft=self.branches.plan(upto)).float()

    @torch.no_grad()
    def input_covariances(self, ctx: StageContext, upto: int) -> list[torch.Tensor]:
        """Per LoRA'd block, C = (1/n) sum over all tokens of the task's augmented, shuffled training images of
        x x^T, x the block's LN1 output, with branches ``0..upto``; float64 on the CPU, summed over ranks."""
        dim = self.backbone.embed_dim
        sums = [torch.zeros(dim, dim, dtype=torch.float64, device=self.device) for _ in self.layers]
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        blocks = peft_blocks(self.backbone)

        def hook(i):
            def record(module, args, output):
                # float64 throughout: no TF32/bf16 rounding reaches the SVDs, and the sum hardly depends on
                # how the batches are split over processes
                x = output.detach().reshape(-1, dim).double()
                sums[i].addmm_(x.T, x)
                if i == 0:
                    count.add_(x.shape[0])
            return record

        handles = [blocks[b].norm1.register_forward_hook(hook(i)) for i, b in enumerate(self.layers)]
        generator = ctx.seed_epoch(0, stage=f"{ctx.stage}/covariance")
        try:
            for step, (x, _) in enumerate(self.train_loader(ctx.task, generator)):
                if ctx.max_batches is not None and step >= ctx.max_batches:
                    break
                if len(x):
                    self.lora_features(x.to(self.device, non_blocking=True), upto)
        finally:
            for h in handles:
                h.remove()
        if is_distributed():
            for s in sums:
                dist.all_reduce(s)
            dist.all_reduce(count)
        return [(s / count).cpu() for s in sums]

    # ---- stages ------------------------------------------------------------------------------------------
    def design(self, ctx: StageContext) -> None:
        """D_t of every LoRA'd block from the task's input covariance and the memory (same for k and v)."""
        task = ctx.task
        covariances = self.input_covariances(ctx, task - 1)
        with torch.no_grad():
            for i, block in enumerate(self.layers):
                basis, kind = self.memory.get(i)
                down = design_down(covariances[i], basis, kind, self.rank)
                for lora in self.branches.tasks[task].loras[str(block)].values():
                    lora.down.copy_(down.to(lora.down))

    def train_loss(self, task: int):
        """Cross-entropy of head ``task`` over its classes (labels shifted), through branches ``0..task``."""
        classes = self.benchmark.task_classes[task]
        column = torch.full((self.benchmark.num_classes,), -1, dtype=torch.long, device=self.device)
        column[classes] = torch.arange(len(classes), device=self.device)
        head = self.heads[task]

        def loss_fn(x, y):
            return shard_cross_entropy(head(self.lora_features(x, task)), column[y])

        return loss_fn

    def trainable(self, task: int) -> list[tuple[list[nn.Parameter], float]]:
        """U_t and head t, the only parameters that train in task ``task`` (requires_grad set so), as groups
        (LoRA at the lr; the head at ``method.head_lr`` when set)."""
        self.branches.requires_grad_(False)
        self.heads.requires_grad_(False)
        ups, head = self.branches.ups(task), list(self.heads[task].parameters())
        for p in [*ups, *head]:
            p.requires_grad_(True)
        factor = 1.0 if self.head_lr is None else self.head_lr / float(self.cfg.optimizer.lr)
        return [(ups, 1.0), (head, factor)]

    def train(self, ctx: StageContext) -> None:
        task = ctx.task
        groups = self.trainable(task)
        # the authors train with the network in eval mode (no dropout or drop-path in these ViTs anyway)
        self.heads.eval()
        step = data_parallel({"lora": self.branches.tasks[task], "head": self.heads[task]}, self.train_loss(task))
        optimizer = None
        if self.sgd:  # InfLoRA_domain: SGD momentum 0.9, the optimizer node's weight decay
            optimizer = partial(torch.optim.SGD, momentum=0.9,
                                weight_decay=float(self.cfg.optimizer.partial.get("weight_decay", 0.0)))
        self.train_epochs(ctx, step, groups, desc="inflora", optimizer=optimizer)
        self.branches.requires_grad_(False)
        self.heads.requires_grad_(False)

    def memory_update(self, ctx: StageContext) -> None:
        task = ctx.task
        covariances = self.input_covariances(ctx, task)
        eps = threshold(self.lamb, self.lame, task, self.benchmark.num_tasks)
        self.memory.update(covariances, eps)
        log.info("task %d: memory threshold %.4f, per block (dims, type): %s", task + 1, eps, self.memory.summary())
        if self.merge_old:
            self.branches.merge_upto(self.backbone, task + 1)

    def run_stage(self, ctx: StageContext) -> None:
        # the stage is called "memory", which is also the memory module's attribute
        (self.memory_update if ctx.stage == "memory" else getattr(self, ctx.stage))(ctx)

    def benchmark_step(self, task: int):
        with torch.no_grad():
            for lora in (lo for per in self.branches.tasks[task].loras.values() for lo in per.values()):
                if not lora.down.any():  # a fresh learner: any orthonormal design times the same
                    q, _ = torch.linalg.qr(torch.randn(lora.down.shape[1], self.rank,
                                                       generator=torch.Generator().manual_seed(0)))
                    lora.down.copy_(q.T.to(lora.down) / 3 ** 0.5)
        groups = self.trainable(task)
        return self.train_loss(task), [p for params, _ in groups for p in params]
