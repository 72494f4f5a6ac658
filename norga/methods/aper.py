"""APER / ADAM with adapters (Zhou et al., IJCV 2024; RCIL's aper_adapter): adapt the PTM on task 0 only, then
class prototypes on the concatenation of the frozen PTM's and the adapted ViT's features
(docs/algorithm.md#aper).

Task 0 is ``adaptation -> prototypes -> evaluate``: an AdaptFormer set (bottleneck ``method.bottleneck``) and a
cosine head over task 0's classes (learnable sigma) trained with cross-entropy, then frozen. Every task's
``prototypes`` sets each new class's row to its mean ``[f_PTM; f_adapted]`` (1536-d for ViT-B; train images,
test transform). Logits: one cosine (sigma 1) over the seen classes. Two ViT passes per test image; both are
computed once per test set (the query is the PTM's feature, the adapted pass is cached while the adapter holds).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from norga.engine.distributed import data_parallel
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import UNSCALED
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.adapter_tuning import class_means, local_columns, make_optimizer, seeded
from norga.methods.base import Learner, tensor_digest
from norga.methods.ranpac import CosineHead
from norga.methods.simplecil import PrototypeHead
from norga.models.peft import AdapterSet


class APER(Learner):
    """APER with the adapter (the authors' first-session adaptation and prototype classifier)."""

    name = "aper"
    lr_scaling = UNSCALED  # the authors' lr at their batch, whatever the batch

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        dim = backbone.embed_dim
        with seeded(cfg.seed, 0, "aper_adaptation"):
            self.adapters = AdapterSet.for_vit(self.backbone, int(m.bottleneck), float(m.adapter_dropout),
                                               float(m.adapter_scale)).to(device)
            self.adaptation_head = CosineHead(dim, len(benchmark.task_classes[0])).to(device)
        self.head = PrototypeHead(benchmark.num_classes, 2 * dim).to(device)

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [*([Stage("adaptation")] if task == 0 else []), Stage("prototypes"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"adapters": self.adapters, "adaptation_head": self.adaptation_head, "prototypes": self.head}

    # ---- stages ------------------------------------------------------------------------------------------
    def adaptation(self, ctx: StageContext) -> None:
        """Task 0: adapters + cosine head, cross-entropy over task 0's classes (the authors' optimiser, cosine
        annealing per epoch to ``method.min_lr``, no clipping); then frozen."""
        m = self.method
        params = self.trained_parameters()
        self.adapters.requires_grad_(True).train()
        self.adaptation_head.requires_grad_(True).train()
        # RCIL maps its "adam" to AdamW
        optimizer = "adamw" if m.optimizer == "adam" else m.optimizer
        step = data_parallel({"adapters": self.adapters, "head": self.adaptation_head}, self.adaptation_loss())
        self.train_epochs(ctx, step, params, desc="adaptation", lr=m.lr,
                          schedule={"name": "cosine", "min_lr": float(m.min_lr)},
                          optimizer=make_optimizer(optimizer, m.momentum, m.weight_decay), clip_grad=None)
        self.adapters.requires_grad_(False).eval()
        self.adaptation_head.requires_grad_(False).eval()

    def trained_parameters(self) -> list[nn.Parameter]:
        return [*self.adapters.parameters(), *self.adaptation_head.parameters()]

    def adaptation_loss(self):
        column = local_columns(self.benchmark.task_classes[0], self.benchmark.num_classes, self.device)

        def loss_fn(x, y):
            with self.amp():
                feats = self._vit(self.backbone, x, peft=self.adapters.plan()).float()
            return shard_cross_entropy(self.adaptation_head(feats), column[y])

        return loss_fn

    def benchmark_step(self, task: int):
        for p in self.trained_parameters():
            p.requires_grad_(True)
        return self.adaptation_loss(), self.trained_parameters()

    @torch.no_grad()
    def prototypes(self, ctx: StageContext) -> None:
        self.adapters.eval()
        classes = self.benchmark.task_classes[ctx.task]
        feats, labels = self.extract_all(lambda x: self.both(x), self.statistics_loader(ctx.task),
                                         f"task {ctx.task + 1} prototypes")
        self.head.prototypes[classes] = class_means(feats, labels, classes).to(self.head.prototypes)

    # ---- prediction --------------------------------------------------------------------------------------
    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.amp():
            return self._vit(self.backbone, x, peft=self.adapters.plan()).float()

    def both(self, x: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """``[f_PTM; f_adapted]``: the query (the frozen PTM's class token) and the adapted pass."""
        ptm = self.backbone_features(x) if query is None else query.float()
        return torch.cat([ptm, self.adapted(x)], dim=1)

    def select(self, query: torch.Tensor, upto_task: int) -> torch.Tensor:
        # one "selection" (the adapter), so that its features are cached per test set
        return torch.zeros(len(query), 1, dtype=torch.long, device=query.device)

    def features(self, x, selection, query) -> torch.Tensor:
        return self.both(x, query)

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        return tensor_digest(*self.adapters.parameters())

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        return masked_logits(self.head(features), self.benchmark.seen_mask(upto_task))
