"""EASE (Zhou et al., CVPR 2024): a fresh adapter subspace per task, prototypes of every class in every
subspace, old classes' blocks in newer subspaces completed from similar new classes (docs/algorithm.md#ease).

A task is ``adapter -> prototypes -> evaluate``:

* ``adapter``: a fresh AdaptFormer set (bottleneck ``method.bottleneck``) and a proxy cosine head over the task's
  classes (learnable sigma) trained with cross-entropy on local labels; then frozen for good.
* ``prototypes``: the mean feature of every new class in every live subspace (the PTM if
  ``method.use_init_ptm``, adapters 0..T), train images with the test transform; then the semantic-guided
  complement (:mod:`norga.methods.ease_head`).
* evaluation: one ViT pass per adapter (``features_per_id``: a frozen adapter's features of a test set are
  computed once per run), logits = reweighted per-block cosine.

``method.moni_adam`` reproduces the authors' OmniBenchmark mode (E1): APER in EASE's clothes.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

import torch
from torch import nn

from norga.engine.distributed import data_parallel
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import UNSCALED
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.adapter_tuning import class_means, local_columns, make_optimizer, seeded, state_sizes
from norga.methods.base import Learner, tensor_digest
from norga.methods.ease_head import SubspacePrototypes
from norga.methods.ranpac import CosineHead
from norga.models.peft import AdapterBank

log = logging.getLogger(__name__)


class EASE(Learner):
    """EASE with the authors' settings by default; their switches in ``method.*`` (docs/algorithm.md#ease)."""

    name = "ease"
    features_per_id = True
    # the authors' lr at their batch, whatever the batch
    lr_scaling = UNSCALED

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        self.moni_adam = bool(m.moni_adam)
        # E1: the OmniBenchmark mode forces the PTM subspace and alpha = beta = 1 (the authors' constructor)
        self.use_ptm = bool(m.use_init_ptm) or self.moni_adam
        self.alpha, self.beta = (1.0, 1.0) if self.moni_adam else (float(m.alpha), float(m.beta))
        self.reweight = bool(m.use_reweight) and not self.moni_adam
        self.adapter_num = int(m.adapter_num)
        dim, depth = backbone.embed_dim, len(backbone.blocks)
        self.bank = AdapterBank(dim, depth, int(m.bottleneck), float(m.adapter_dropout),
                                float(m.adapter_scale)).to(device)
        with seeded(cfg.seed, 0, "ease_proxy_heads"):
            self.proxy = nn.ModuleList([CosineHead(dim, len(cs)) for cs in benchmark.task_classes]).to(device)
        self.head = SubspacePrototypes(benchmark.task_classes, benchmark.num_classes, dim, self.use_ptm).to(device)

    # ---- the contract ------------------------------------------------------------------------------------
    def trains(self, task: int) -> bool:
        """E1: only the first ``adapter_num`` adapters train; the later ones stay fresh (identity)."""
        return not self.moni_adam or task < self.adapter_num

    def stages(self, task: int) -> list[Stage]:
        return [*([Stage("adapter")] if self.trains(task) else []), Stage("prototypes"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"adapters": self.bank, "proxy_heads": self.proxy, "prototypes": self.head}

    def load_state_dict(self, state: dict) -> None:
        # the bank grows by one set per task: grow it to the checkpoint's size first
        self.grow(state_sizes(state["adapters"], "sets.") - 1)
        super().load_state_dict(state)

    def grow(self, task: int) -> None:
        """Make sure adapter sets 0..task exist; a new one is fresh (zero up-projection), seeded by its task."""
        while len(self.bank) <= task:
            with seeded(self.cfg.seed, len(self.bank), "ease_adapter"):
                self.bank.add()
            self.bank.sets[-1].to(self.device).requires_grad_(False)

    # ---- stages ------------------------------------------------------------------------------------------
    def adapter(self, ctx: StageContext) -> None:
        """Train a fresh adapter set and the task's proxy cosine head (local labels; the authors' optimiser,
        cosine annealing per epoch to ``method.min_lr``, no clipping); then freeze the set."""
        m, task = self.method, ctx.task
        self.grow(task)
        params = self.trained_parameters(task)
        for p in params:
            p.requires_grad_(True)
        self.bank.sets[task].train()
        self.proxy[task].train()
        step = data_parallel({"adapter": self.bank.sets[task], "head": self.proxy[task]}, self.proxy_loss(task))
        self.train_epochs(ctx, step, params, desc="adapter", lr=m.lr,
                          schedule={"name": "cosine", "min_lr": float(m.min_lr)},
                          optimizer=make_optimizer(m.optimizer, m.momentum, m.weight_decay), clip_grad=None)
        self.bank.sets[task].requires_grad_(False).eval()
        self.proxy[task].requires_grad_(False).eval()

    def trained_parameters(self, task: int) -> list[nn.Parameter]:
        return [*self.bank.sets[task].parameters(), *self.proxy[task].parameters()]

    def proxy_loss(self, task: int):
        """Cross-entropy of the proxy head over the task's classes, features through adapter ``task`` only."""
        column = local_columns(self.benchmark.task_classes[task], self.benchmark.num_classes, self.device)

        def loss_fn(x, y):
            with self.amp():
                feats = self._vit(self.backbone, x, peft=self.bank.plan(task)).float()
            return shard_cross_entropy(self.proxy[task](feats), column[y])

        return loss_fn

    def benchmark_step(self, task: int):
        if not self.trains(task):
            return None
        self.grow(task)
        params = self.trained_parameters(task)
        for p in params:
            p.requires_grad_(True)
        return self.proxy_loss(task), params

    @torch.no_grad()
    def prototypes(self, ctx: StageContext) -> None:
        """Every new class's prototype in every live subspace, then the complement of old classes' blocks."""
        task = ctx.task
        self.grow(task)  # E1: the untrained adapter of this task exists too (it is evaluated)
        self.bank.eval()
        classes = self.benchmark.task_classes[task]
        filled = [s for s in self.head.subspaces(task)
                  if not self.moni_adam or s == self.head.ptm or s < self.adapter_num]
        loader = self.statistics_loader(task)
        for s in filled:
            feats, labels = self.extract_all(lambda x, s=s: self.subspace_features(x, s), loader,
                                             f"task {task + 1} prototypes, subspace {s}")
            self.head.protos[s, classes] = class_means(feats, labels, classes).to(self.head.protos)
        if self.moni_adam:
            # E1: the authors' loop breaks at once for adapter_num = 1; in general only trained adapters
            self.head.recompute_complement(task, float(self.method.complement_tau), bool(self.method.recalc_sim),
                                           last_adapter=self.adapter_num - 1)
        else:
            self.head.recompute_complement(task, float(self.method.complement_tau), bool(self.method.recalc_sim))

    # ---- prediction --------------------------------------------------------------------------------------
    def subspace_features(self, x: torch.Tensor, s: int, query: torch.Tensor | None = None) -> torch.Tensor:
        """The class token through adapter ``s`` (``s == head.ptm``: the plain PTM), fp32, no gradient. A fresh
        adapter (zero up-projection) adds exactly zero, so its features are the PTM's."""
        if s == self.head.ptm and self.use_ptm or self.is_identity(s):
            return self.backbone_features(x) if query is None else query.float()
        with torch.no_grad(), self.amp():
            return self._vit(self.backbone, x, peft=self.bank.plan(s)).float()

    def is_identity(self, s: int) -> bool:
        if s >= len(self.bank):
            return False
        return all(not a.up.weight.any() and not a.up.bias.any() for a in self.bank.sets[s].adapters.values())

    def select(self, query: torch.Tensor, upto_task: int) -> torch.Tensor:
        # every sample uses every live subspace (no task identification)
        ids = torch.tensor(self.head.subspaces(upto_task), device=query.device)
        return ids.expand(len(query), -1)

    def features(self, x, selection, query) -> torch.Tensor:
        # the evaluator asks for one id at a time (features_per_id)
        return self.subspace_features(x, int(selection[0, 0]), query)

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        (s,) = selection
        if s == self.head.ptm and self.use_ptm or self.is_identity(s):
            return "frozen"
        return tensor_digest(*self.bank.sets[s].parameters())

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        logits = self.head(features, upto_task, self.reweight, self.alpha, self.beta)
        return masked_logits(logits, self.benchmark.seen_mask(upto_task))
