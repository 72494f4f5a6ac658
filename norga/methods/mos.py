"""MOS (Sun et al., AAAI 2025): one running adapter set trained on every task and pulled toward the mean of its
earlier snapshots, a linear head aligned on sampled Gaussian class features, and self-refined adapter retrieval
at test time (docs/algorithm.md#mos).

A task is ``adapt -> class_statistics -> align -> prototypes -> evaluate``:

* ``adapt``: theta (:class:`~norga.models.mos.SnapshotAdapters`) and the head over all classes, cross-entropy with
  the earlier tasks' classes at -inf plus ``reg`` times the contrastive term over the stored class means and the
  batch features; SGD (adapters at ``lr``, head at ``head_lr_factor * lr``), cosine per epoch to ``min_lr``.
  The merge pull: see ``method.merge_mode``.
* ``class_statistics``: snapshot Theta_T and S_T, then each new class's mean and (co)variance with theta.
* ``align`` (T > 0): the head alone on features sampled from every seen class's Gaussian
  (:func:`norga.methods.tap.train_on_statistics`).
* ``prototypes``: cosine prototypes of the new classes from adapter 0's features.

Prediction (``features_per_id``): the selection is every adapter 0..T, so each frozen snapshot's features of a
test set are computed once per run; :meth:`MOS.logits` retrieves, refines and ensembles from them.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from norga.engine.distributed import all_gather_with_grad, data_parallel
from norga.engine.evaluate import assemble_per_id
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import UNSCALED
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner, tensor_digest
from norga.methods.hide_prompt import contrastive_loss
from norga.methods.simplecil import PrototypeHead
from norga.methods.statistics import ClassStatistics
from norga.methods.tap import train_on_statistics
from norga.models.mos import SnapshotAdapters
from norga.models.peft import peft_blocks
from norga.models.vit import build_head, vit_features

MERGE_MODES = ("official_per_block", "once_per_step")


def refine(head_logits, adapter_features: torch.Tensor, first: torch.Tensor, class_to_task: torch.Tensor,
           max_evaluations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-refined retrieval: from task ``first`` per sample, evaluate the head on that task's adapter features
    ``adapter_features[:, k]`` (``(n, T+1, D)``); move to the task of its argmax class until it stays or
    ``max_evaluations`` evaluations were made. Returns the last logits ``(n, C)`` and the last task ``(n,)``."""
    n = len(first)
    rows = torch.arange(n, device=first.device)
    task, active, final = first.clone(), torch.ones(n, dtype=torch.bool, device=first.device), None
    for evaluation_count in range(1, max_evaluations + 1):
        z = head_logits(adapter_features[rows, task])
        final = z.clone() if final is None else torch.where(active.unsqueeze(1), z, final)
        moved = class_to_task[z.argmax(dim=1)]
        stop = active & ((moved == task) | (evaluation_count >= max_evaluations))
        active = active & ~stop
        task = torch.where(active, moved, task)
        if not active.any():
            break
    return final, task


class MOS(Learner):
    """MOS with its reference switches (``method.merge_mode``, ``method.eval_inplace_drift``)."""

    name = "mos"
    features_per_id = True
    # the authors' lrs at their batch sizes, whatever the batch
    lr_scaling = UNSCALED

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        if m.merge_mode not in MERGE_MODES:
            raise ValueError(f"method.merge_mode must be one of {MERGE_MODES}, got {m.merge_mode!r}")
        self.dim = backbone.embed_dim
        self.adapters = SnapshotAdapters(self.dim, len(peft_blocks(self.backbone)), benchmark.num_tasks,
                                         int(m.bottleneck), float(m.adapter_dropout), float(m.adapter_scale),
                                         float(m.adapter_momentum)).to(device)
        self.head = build_head(self.dim, benchmark.num_classes).to(device)  # timm's init: trunc-normal 0.02, bias 0
        self.prototype_head = PrototypeHead(benchmark.num_classes, self.dim).to(device)
        self.stats = ClassStatistics(m.statistics, seed=cfg.seed)
        self.per_block = m.merge_mode == "official_per_block"
        self.drift = bool(m.eval_inplace_drift)
        # with the reference drift a test batch's features depend on how many batches came before it
        self.eval_cacheable = not self.drift
        self.class_to_task = torch.as_tensor(benchmark.class_to_task, device=device)
        self._retrieved: list[torch.Tensor] = []

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [Stage("adapt"), Stage("class_statistics"), Stage("align"), Stage("prototypes"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"adapters": self.adapters, "head": self.head, "prototypes": self.prototype_head}

    def load_artifact(self, name: str, state: dict) -> None:
        if not name.startswith("mos_stats_task_"):
            super().load_artifact(name, state)
        self.stats.load_state_dict(state, merge=True)

    # ---- forward paths -----------------------------------------------------------------------------------
    def running_features(self, x: torch.Tensor, task: int, pulls: bool) -> torch.Tensor:
        """Features with theta; with ``pulls`` the authors' per-block pulls toward S_{task-1}/task happen in it."""
        vit = vit_features if pulls else self._vit  # the pulls rewrite weights mid-forward: never compiled
        with self.adapters.pull_per_block(self.adapters.running, task, pulls), self.amp():
            return vit(self.backbone, x, peft=self.adapters.running.plan()).float()

    def snapshot_features(self, x: torch.Tensor, k: int, drift: bool = False) -> torch.Tensor:
        """Features with the frozen snapshot Theta_k; with ``drift`` the authors' per-block pulls rewrite it."""
        snap = self.adapters.snapshots.sets[k].eval()
        vit = vit_features if drift else self._vit
        with torch.no_grad(), self.adapters.pull_per_block(snap, k, drift), self.amp():
            return vit(self.backbone, x, peft=snap.plan()).float()

    # ---- prediction --------------------------------------------------------------------------------------
    def query(self, x: torch.Tensor) -> torch.Tensor:
        # MOS selects every adapter whatever the image: no backbone pass (zero-width query)
        return x.new_zeros(len(x), 0)

    def select(self, query: torch.Tensor, upto_task: int) -> torch.Tensor:
        return torch.arange(upto_task + 1, device=query.device).expand(len(query), -1)

    def features(self, x, selection, query) -> torch.Tensor:
        # the evaluator asks for one id at a time; a wider selection gets the concatenation (features_per_id)
        by_id = {k: self.snapshot_features(x, k, drift=self.drift) for k in torch.unique(selection).tolist()}
        if len(by_id) == 1 and selection.shape[1] == 1:
            return next(iter(by_id.values()))
        return assemble_per_id(selection, by_id)

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        if self.drift:
            return None  # the reference rewrites the snapshot in every pass
        (k,) = selection
        return tensor_digest(*self.adapters.snapshots.sets[k].parameters())

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        """Cosine to adapter 0's prototypes picks a first task, the head refines it over the tasks' adapters,
        then (``method.ensemble``) softmax(head) + softmax((T+1) cosine)."""
        tasks = upto_task + 1
        per_task = features.view(len(features), tasks, self.dim)
        seen = self.benchmark.seen_mask(upto_task).to(features.device)
        cosine = masked_logits(self.prototype_head(per_task[:, 0]), seen)
        first = self.class_to_task[cosine.argmax(dim=1)]
        z, retrieved = refine(lambda f: masked_logits(self.head(f), seen), per_task, first, self.class_to_task,
                              int(self.method.max_evaluations))
        self._retrieved.append(retrieved.cpu())
        if not self.method.ensemble:
            return z
        return masked_logits(F.softmax(z, dim=1) + F.softmax(tasks * cosine, dim=1), seen)

    def selected_task(self, selection: torch.Tensor | None) -> torch.Tensor | None:
        """The task of the adapter each sample's refinement ended on (from the logits just computed)."""
        retrieved, self._retrieved = self._retrieved, []
        if selection is None or not retrieved:
            return None
        retrieved = torch.cat(retrieved)
        return retrieved if len(retrieved) == len(selection) else None

    # ---- stages ------------------------------------------------------------------------------------------
    def train_loss(self, task: int):
        """Cross-entropy over the head (earlier tasks' classes at -inf) plus ``reg`` times the contrastive term
        over the stored class means and the global batch's features."""
        m = self.method
        allowed = self.benchmark.class_mask(task)
        means = self.stats.mean_matrix(self.device)
        reg, temperature = float(m.reg), float(m.contrastive_temperature)

        def loss_fn(x, y):
            feats = self.running_features(x, task, self.per_block)
            loss = shard_cross_entropy(masked_logits(self.head(feats), allowed), y)
            if reg:
                loss = loss + reg * contrastive_loss(all_gather_with_grad(feats), means, temperature)
            return loss

        return loss_fn

    def adapt(self, ctx: StageContext) -> None:
        m, task = self.method, ctx.task
        running = self.adapters.running
        running.train()
        self.head.train()
        step = data_parallel({"adapters": running, "head": self.head}, self.train_loss(task))
        groups = [(list(running.parameters()), 1.0), (list(self.head.parameters()), float(m.head_lr_factor))]
        self.train_epochs(ctx, step, groups, desc="MOS", lr=float(m.lr),
                          schedule={"name": "cosine", "min_lr": float(m.min_lr)}, optimizer=self.optimizer(task),
                          clip_grad=None)

    def optimizer(self, task: int):
        """The factory of task ``task``'s optimiser: SGD with momentum and weight decay, and one pull of theta
        after every step (in both merge modes)."""
        m, adapters = self.method, self.adapters

        def sgd(groups) -> torch.optim.Optimizer:
            optimizer = torch.optim.SGD(groups, momentum=float(m.momentum), weight_decay=float(m.weight_decay))
            optimizer.register_step_post_hook(lambda *_: adapters.pull(adapters.running, task))
            return optimizer

        return sgd

    def benchmark_step(self, task: int):
        return self.train_loss(task), [*self.adapters.running.parameters(), *self.head.parameters()]

    @torch.no_grad()
    def class_statistics(self, ctx: StageContext) -> None:
        task = ctx.task
        self.adapters.snapshot(task)
        self.adapters.running.eval()
        if self.per_block:
            # the authors' loaders, one per class in batches of 3 x batch, each batch pulling theta 12 times
            parts = [self.extract_all(lambda x: self.running_features(x, task, True),
                                      self.statistics_loader(task, [c], batch_size=3 * self.batch_size),
                                      f"task {task + 1} statistics, class {c}")
                     for c in self.benchmark.task_classes[task]]
            feats, labels = torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])
        else:
            feats, labels = self.extract_all(lambda x: self.running_features(x, task, False),
                                             self.statistics_loader(task), f"task {task + 1} statistics")
        self.stats.fit(feats, labels)
        ctx.save_artifact(f"mos_stats_task_{task}", self.stats.state_dict(self.benchmark.task_classes[task]))

    def align(self, ctx: StageContext) -> None:
        task, ca = ctx.task, self.method.alignment
        if task == 0:
            return
        seen = self.seen_classes(task)
        train_on_statistics(self, ctx, self.head, self.stats, seen, len(seen),
                            n_per_class=ca.samples_per_class_factor * self.batch_size, epochs=ca.epochs, lr=ca.lr,
                            allowed=self.benchmark.seen_mask(task), momentum=ca.momentum,
                            weight_decay=float(self.method.weight_decay))

    @torch.no_grad()
    def prototypes(self, ctx: StageContext) -> None:
        task = ctx.task
        feats, labels = self.extract_all(partial(self.snapshot_features, k=0), self.statistics_loader(task),
                                         f"task {task + 1} prototypes (adapter 0)")
        self.prototype_head.fit(feats.to(self.device), labels.to(self.device))
