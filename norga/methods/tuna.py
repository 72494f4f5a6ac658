"""TUNA (ICCV 2025): one running AdaptFormer adapter set theta, trained on every task and never re-initialised,
snapshotted after each task (Theta_t); a universal adapter elected from the snapshots (EMR merging); cosine
heads, one per task, trained with CosFace and then aligned on features sampled from per-class Gaussians;
at test the most confident (least-entropy) task adapter ensembled with the universal one
(docs/algorithm.md#tuna).

A task is ``train -> consolidate -> align -> evaluate``:

* ``train``: CosFace on the current task's head (local labels) through theta, plus the orthogonality term
  between theta's and the earlier snapshots' up-projections (``method.use_orth``);
* ``consolidate``: Theta_T = theta; the universal adapter (T > 0); class statistics of the task's classes
  with theta (evaluation transform), written once as an artifact;
* ``align`` (T > 0): every head trained on sampled class features (:func:`norga.methods.tap.train_on_statistics`).

Evaluation runs the ViT once per adapter (:attr:`features_per_id`): ids ``0..T`` are the snapshots,
``num_tasks`` the EMR-merged adapter; with ``method.universal=official_cur_adapter`` (the reference, defect
T1) the universal branch is theta = Theta_T, so it reuses id T's features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from norga.engine.distributed import data_parallel
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import UNSCALED
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner, tensor_digest
from norga.methods.statistics import ClassStatistics
from norga.methods.tap import train_on_statistics
from norga.models.peft import AdapterBank, AdapterSet, peft_blocks
from norga.models.tuna import CosineHeads, elect_into

log = logging.getLogger(__name__)


# ---- formulas -----------------------------------------------------------------------------------------------
def cosface_logits(cos: torch.Tensor, labels: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """``s * (cos - m * onehot(y))``: cross-entropy of these is CosFace,
    ``-log(e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j}))``."""
    return scale * (cos - margin * F.one_hot(labels, cos.shape[1]).to(cos))


def orth_loss(current: AdapterSet, earlier: list[AdapterSet], detach: bool) -> torch.Tensor:
    """``sum_k (1/L) sum_l |mean(N(U_l) N(U_l^k)^T)|`` over the earlier sets ``k`` and the ``L`` adapted blocks,
    ``U`` an up-projection weight ``(dim, r)`` with its rows L2-normalised (``N``)."""
    total = current.adapters[str(current.layers[0])].up.weight.new_zeros(())
    for other in earlier:
        for i in current.layers:
            u = F.normalize(current.adapters[str(i)].up.weight, dim=1)
            v = F.normalize(other.adapters[str(i)].up.weight, dim=1)
            total = total + (u @ (v.detach() if detach else v).T).mean().abs() / len(current.layers)
    return total


def decay_scales(positions: range, task_of: list[int], task: int, task_size: int, rule: str) -> list[float]:
    """The factor on each seen class's mean before sampling (``method.decay``), by the class's position ``c``
    in the class order: ``0.9 + 0.1 (t + 1) / (T + 1)`` with ``t`` the class's task (``intended``), or, as the
    reference computes it (defect T2), ``t = c // (known - total)``, a floor division by minus the current
    task's size."""
    if rule == "intended":
        return [0.9 + 0.1 * (task_of[c] + 1) / (task + 1) for c in positions]
    return [0.9 + 0.1 * (c // -task_size + 1) / (task + 1) for c in positions]


# ---- the learner --------------------------------------------------------------------------------------------
class TUNA(Learner):
    """TUNA as its authors' code runs it; the defects T1-T3 behind ``method.universal``, ``method.decay_rule``,
    ``method.alignment.cosine_period`` (and the snapshots the orthogonality term trains, ``orth_trains_snapshots``)."""

    name = "tuna"
    features_per_id = True
    # the authors' lrs, whatever the batch
    lr_scaling = {"train": UNSCALED, "align": UNSCALED}

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        geometry = (backbone.embed_dim, len(peft_blocks(backbone)), int(m.bottleneck), float(m.adapter_dropout),
                    float(m.adapter_scale))
        self.theta = AdapterSet(*geometry).to(device)
        # every snapshot slot exists from the start: one state-dict layout for every checkpoint
        self.snapshots = AdapterBank(*geometry)
        for _ in range(benchmark.num_tasks):
            self.snapshots.add()
        self.snapshots.to(device).requires_grad_(False)
        self.merged = AdapterSet(*geometry).to(device).requires_grad_(False)
        self.heads = CosineHeads(backbone.embed_dim, benchmark.task_classes, float(m.scale)).to(device)
        self.statistics = ClassStatistics(m.statistics, seed=cfg.seed)
        self.universal_id = benchmark.num_tasks
        self.dim = backbone.embed_dim

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [Stage("train"), Stage("consolidate"), Stage("align"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"theta": self.theta, "snapshots": self.snapshots, "merged": self.merged, "heads": self.heads}

    def load_artifact(self, name: str, state: dict) -> None:
        if not name.startswith("tuna_stats_task_"):
            super().load_artifact(name, state)
        self.statistics.load_state_dict(state, merge=True)

    # ---- prediction --------------------------------------------------------------------------------------
    def query(self, x: torch.Tensor) -> torch.Tensor:
        # nothing is read from a frozen pass: every feature comes from an adapter (features)
        return x.new_zeros(len(x), 1)

    def select(self, query: torch.Tensor, upto_task: int) -> torch.Tensor:
        """Every sample: the snapshots ``0..T`` and the universal adapter (none at T = 0)."""
        ids = list(range(upto_task + 1))
        if upto_task > 0:
            ids.append(upto_task if self.method.universal == "official_cur_adapter" else self.universal_id)
        return torch.tensor(ids, device=query.device).expand(len(query), -1)

    def adapter(self, i: int) -> AdapterSet:
        return self.merged if i == self.universal_id else self.snapshots.sets[i]

    def features(self, x, selection, query) -> torch.Tensor:
        """Row ``(i, j, ...)``: the concatenation of the features through adapters ``i``, ``j``, ... (one ViT
        pass per adapter; the evaluator asks for one id at a time, ``(n, 1)``)."""
        columns = []
        for col in selection.T:
            out = None
            for i in torch.unique(col).tolist():
                rows = (col == i).nonzero().flatten()
                with torch.no_grad(), self.amp():
                    f = self._vit(self.backbone, x[rows], peft=self.adapter(int(i)).plan()).float()
                out = f.new_empty(len(x), f.shape[1]) if out is None else out
                out[rows] = f
            columns.append(out)
        return torch.cat(columns, dim=1)

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        (i,) = selection
        return tensor_digest(*self.adapter(i).parameters())

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        """T = 0: scaled cosine through Theta_0. T > 0: ``softmax(z_k*) + softmax(z_u)``, ``k*`` the snapshot
        whose scaled-cosine logits over the seen classes have the least entropy, ``z_u`` the universal one's."""
        seen = self.benchmark.seen_mask(upto_task)
        z = [masked_logits(self.heads(f), seen) for f in features.split(self.dim, dim=1)]
        if len(z) == 1:
            return z[0]
        stack = torch.stack(z[:-1])  # (T + 1, n, C)
        p = stack.softmax(dim=2)
        entropy = -(p * torch.log(p + 1e-10)).nan_to_num().sum(dim=2)
        chosen = entropy.argmin(dim=0)
        best = stack[chosen, torch.arange(stack.shape[1], device=stack.device)]
        return masked_logits(best.softmax(dim=1) + z[-1].softmax(dim=1), seen)

    # ---- training ----------------------------------------------------------------------------------------
    def trainable(self, task: int) -> list[nn.Parameter]:
        """Set what task ``task``'s training stage updates and return it: theta, the task's head and, with the
        reference's orthogonality term, the earlier snapshots' up-projections. (The reference hands every head
        to the optimiser, but the loss reads the current one only, so the others get no gradient and no decay.)"""
        self.theta.requires_grad_(True)
        for t, w in enumerate(self.heads.heads):
            w.requires_grad_(t == task)
        self.snapshots.requires_grad_(False)
        params = [*self.theta.parameters(), self.heads.heads[task]]
        if self.snapshot_grads(task):
            for k in range(task):
                for adapter in self.snapshots.sets[k].adapters.values():
                    adapter.up.weight.requires_grad_(True)
                    params.append(adapter.up.weight)
        return params

    def snapshot_grads(self, task: int) -> bool:
        m = self.method
        return bool(m.use_orth and m.orth_trains_snapshots and task > 0)

    def train_loss(self, task: int):
        """CosFace over task ``task``'s head (local labels) + ``reg e^{-(T+1)}`` times :func:`orth_loss`."""
        m = self.method
        local = torch.full((self.benchmark.num_classes,), -1, dtype=torch.long, device=self.device)
        classes = self.benchmark.task_classes[task]
        local[classes] = torch.arange(len(classes), device=self.device)
        scale, margin = float(m.scale), float(m.margin)
        weight = float(m.reg) * math.exp(-(task + 1)) if m.use_orth and task > 0 else 0.0
        earlier = list(self.snapshots.sets[:task])
        detach = not self.snapshot_grads(task)

        def loss_fn(x, y):
            with self.amp():
                feats = self._vit(self.backbone, x, peft=self.theta.plan()).float()
            labels = local[y]
            loss = shard_cross_entropy(cosface_logits(self.heads.task_cos(feats, task), labels, scale, margin),
                                       labels)
            if weight:
                loss = loss + weight * orth_loss(self.theta, earlier, detach)
            return loss

        return loss_fn

    def train(self, ctx: StageContext) -> None:
        m, task = self.method, ctx.task
        params = self.trainable(task)
        self.theta.train()
        self.heads.train()
        modules = {"theta": self.theta, "heads": self.heads}
        if self.snapshot_grads(task):
            modules["snapshots"] = self.snapshots
        step = data_parallel(modules, self.train_loss(task))
        self.train_epochs(ctx, step, params, desc="TUNA", lr=float(m.lr),
                          schedule={"name": "cosine", "min_lr": 0.0},
                          optimizer=partial(torch.optim.SGD, momentum=float(m.momentum),
                                            weight_decay=float(m.weight_decay)),
                          clip_grad=None)
        self.snapshots.requires_grad_(False)

    def benchmark_step(self, task: int):
        return self.train_loss(task), self.trainable(task)

    @torch.no_grad()
    def consolidate(self, ctx: StageContext) -> None:
        """Snapshot, universal adapter, class statistics with theta."""
        task = ctx.task
        self.theta.requires_grad_(False)
        self.snapshots.sets[task].load_state_dict(self.theta.state_dict())
        if task > 0:
            elect_into(self.merged, list(self.snapshots.sets[:task + 1]))
        self.theta.eval()
        ctx.seed_epoch()
        fn = lambda x: self._vit(self.backbone, x, peft=self.theta.plan()).float()  # noqa: E731
        with self.amp():
            feats, labels = self.extract_all(fn, self.statistics_loader(task), f"task {task + 1} statistics")
        self.statistics.fit(feats, labels)
        ctx.save_artifact(f"tuna_stats_task_{task}",
                          self.statistics.state_dict(self.benchmark.task_classes[task]))

    def align(self, ctx: StageContext) -> None:
        """Classifier alignment: every head of tasks 0..T on sampled class features, plain CE on scaled cosines."""
        m, task = self.method, ctx.task
        if task == 0:
            return
        for t, w in enumerate(self.heads.heads):
            w.requires_grad_(t <= task)
        seen = self.seen_classes(task)
        scales = None
        if m.decay:
            values = decay_scales(range(len(seen)), [int(self.benchmark.class_to_task[c]) for c in seen], task,
                                  len(self.benchmark.task_classes[task]), str(m.decay_rule))
            scales = dict(zip(seen, values))
        period = None if m.alignment.cosine_period is None else int(m.alignment.cosine_period)
        train_on_statistics(
            self, ctx, self.heads, self.statistics, seen, len(seen),
            n_per_class=int(m.alignment.samples_per_class_factor) * self.batch_size, epochs=int(m.alignment.epochs),
            lr=float(m.alignment.lr), allowed=self.benchmark.seen_mask(task), momentum=float(m.alignment.momentum),
            weight_decay=float(m.weight_decay), cosine_period=period, mean_scale=scales)
        self.heads.eval()
