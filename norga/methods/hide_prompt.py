"""HiDe-Prompt: task-identity inference (TII), within-task prediction (WTP) with prefix prompts, and
task-adaptive prediction (TAP) on features sampled from per-class Gaussians (docs/algorithm.md#hide-prompt-and-norga).

NoRGa (``norga.methods.norga``) is this learner with a non-linear residual gate on the prefix logits.
A task is eight stages: ``tii_train -> tii_stats -> tii_tap -> wtp_train -> wtp_stats -> evaluate_pre_tap ->
wtp_tap -> evaluate``; each seeds its own randomness per epoch, so stages are independent of what ran before.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from norga.engine.distributed import all_gather_with_grad, data_parallel, shard_loader
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import BY_GLOBAL_BATCH, UNSCALED
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner, tensor_digest
from norga.methods.statistics import ClassStatistics
from norga.methods.tap import train_on_statistics
from norga.models.attention import configure_prefix_attention, describe_prefix_impl
from norga.models.prompts import PromptPool
from norga.models.tii import TIIHead
from norga.models.vit import build_head, check_layers, head_geometry

log = logging.getLogger(__name__)


def contrastive_loss(features: torch.Tensor, class_means: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Cross-entropy of ``M M^T / temperature`` against the identity, M = [stored means; batch features]."""
    m = features if class_means is None else torch.cat([class_means.to(features), features])
    sim = m @ m.T / temperature
    return F.cross_entropy(sim, torch.arange(len(m), device=m.device))


class HiDePrompt(Learner):
    """The three-part learner of HiDe-Prompt; ``gate`` is None here and set by NoRGa."""

    name = "hide"
    takes_batchwise_prompt = True
    # the reference: TII, its TAP and the prompts scale with the batch (batch / 256), the WTP TAP does not
    lr_scaling = {"tii_train": BY_GLOBAL_BATCH, "tii_tap": BY_GLOBAL_BATCH, "wtp_train": BY_GLOBAL_BATCH,
                  "wtp_tap": UNSCALED}

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        method = self.method
        dim, heads, head_dim = head_geometry(backbone)
        check_layers("method.prompt_layers", method.prompt_layers, backbone)
        num_classes, num_tasks = benchmark.num_classes, benchmark.num_tasks
        self.tii = TIIHead(dim, num_classes, list(method.tii.mlp_structure)).to(device)
        self.prompts = PromptPool(list(method.prompt_layers), num_tasks, method.prompt_length, heads, head_dim,
                                  gate=self.gate_name(), layout=method.prefix_layout).to(device)
        self.head = build_head(dim, num_classes, cfg.backbone.get("reference_fc_norm", False)).to(device)
        self.tii_statistics = ClassStatistics(method.statistics, method.n_centroids, cfg.seed)
        self.wtp_statistics = ClassStatistics(method.statistics, method.n_centroids, cfg.seed)
        self._tii_features: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.batchwise_prompt = bool(method.batchwise_prompt)
        # in the reference layout a sample's features depend on its batch: evaluate batch by batch
        self.eval_cacheable = method.prefix_layout == "per_sample"
        attention = configure_prefix_attention(self.backbone, cfg.train.attention, device)
        log.info("prefix attention: %s", describe_prefix_impl(attention, device))

    @classmethod
    def instead(cls, option: str, value) -> str:
        if option == "gate":
            return f"HiDe-Prompt is plain prefix tuning; use method=norga gate={value}"
        return super().instead(option, value)

    def gate_name(self) -> str | None:
        """The gate on the prefix logits: none (the engine refuses ``method.gate`` for HiDe-Prompt)."""
        return None

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [Stage("tii_train"), Stage("tii_stats"), Stage("tii_tap"), Stage("wtp_train"), Stage("wtp_stats"),
                evaluation("evaluate_pre_tap", tag="pre_tap"), Stage("wtp_tap"), evaluation("evaluate")]

    def modules(self) -> dict[str, nn.Module]:
        return {"tii": self.tii, "prompts": self.prompts, "head": self.head}

    def statistics(self, kind: str) -> ClassStatistics:
        """The class statistics of the ``tii`` or the ``wtp`` model."""
        return {"tii": self.tii_statistics, "wtp": self.wtp_statistics}[kind]

    def load_artifact(self, name: str, state: dict) -> None:
        # {tii,wtp}_stats_task_<t>: the statistics of task t's classes, written once by the stats stages
        kind = name.split("_", 1)[0]
        if kind not in ("tii", "wtp") or "_stats_task_" not in name:
            super().load_artifact(name, state)
        self.statistics(kind).load_state_dict(state, merge=True)

    # ---- prediction: TII picks the task, its prompt gives the features, the WTP head the class ---------------
    def select(self, query: torch.Tensor, upto_task: int) -> torch.Tensor:
        seen = self.benchmark.seen_mask(upto_task)
        tii = masked_logits(self.tii(query).float(), seen)
        classes = tii.argmax(dim=1)
        return torch.as_tensor(self.benchmark.class_to_task, device=classes.device)[classes].unsqueeze(1)

    def selected_task(self, selection: torch.Tensor | None) -> torch.Tensor | None:
        return None if selection is None else selection[:, 0]

    def features(self, x, selection, query) -> torch.Tensor:
        return self.prompted_features(x, selection[:, 0])

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        # a sample's features under prompt p depend on prompt p and the gate parameters only
        (p,) = selection
        return tensor_digest(self.prompts.prompts[:, :, p], self.prompts.gate_params)

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        return self.head(features)

    # ---- forward paths -----------------------------------------------------------------------------------
    def prompted_features(self, x: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        with self.amp():
            return self._vit(self.backbone, x, self.prompts.prefixes_for_ids(prompt_ids)).float()

    def task_features(self, x: torch.Tensor, task: int, momentum: float = 0.0) -> torch.Tensor:
        with self.amp():
            return self._vit(self.backbone, x, self.prompts.prefixes_for_task(task, len(x), momentum)).float()

    # ---- stages ------------------------------------------------------------------------------------------
    def tii_train(self, ctx: StageContext) -> None:
        cfg, tii, task = self.cfg, self.method.tii, ctx.task
        allowed = self.benchmark.class_mask(task)
        self.tii.train()
        batches = None  # the task's augmented images
        if tii.feature_cache:
            # one backbone pass without augmentation, then MLP epochs on the cached features
            features, labels = self._backbone_train_features(ctx)
            cached = TensorDataset(features, labels)
            batches = lambda generator: shard_loader(cached, cfg.train.batch_size, torch.device("cpu"),  # noqa: E731
                                                     shuffle=True, generator=generator)

        def loss_fn(x, y):
            feats = x if tii.feature_cache else self.backbone_features(x)
            return shard_cross_entropy(masked_logits(self.tii(feats), allowed), y)

        step = data_parallel({"tii": self.tii}, loss_fn)
        # the reference clips the TII gradients at 1.0 on every dataset (tii.clip_grad)
        self.train_epochs(ctx, step, list(self.tii.parameters()), desc="TII", batches=batches, epochs=tii.epochs,
                          lr=tii.lr, schedule=tii.scheduler, clip_grad=tii.clip_grad)

    @torch.no_grad()
    def _backbone_train_features(self, ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen backbone's features of the task's training images (evaluation transform); kept for the
        task's statistics stage, which needs exactly these."""
        task = ctx.task
        if self._tii_features is None or self._tii_features[0] != task:
            ctx.seed_epoch(stage="tii_stats")
            feats, labels = self.extract_all(self.backbone_features, self.statistics_loader(task),
                                             f"task {task} backbone features")
            self._tii_features = (task, feats, labels)
        return self._tii_features[1], self._tii_features[2]

    @torch.no_grad()
    def tii_stats(self, ctx: StageContext) -> None:
        feats, labels = self._backbone_train_features(ctx)
        self._tii_features = None
        self.tii_statistics.fit(feats, labels)
        self._save_statistics(ctx, "tii")

    def _save_statistics(self, ctx: StageContext, kind: str) -> None:
        classes = self.benchmark.task_classes[ctx.task]
        ctx.save_artifact(f"{kind}_stats_task_{ctx.task}", self.statistics(kind).state_dict(classes))

    def tii_tap(self, ctx: StageContext) -> None:
        task, tap = ctx.task, self.method.tii.tap
        if task == 0:
            return
        train_on_statistics(
            self, ctx, self.tii, self.tii_statistics, self.seen_classes(task), self.earlier_classes(task),
            n_per_class=self.batch_size, epochs=tap.epochs, lr=tap.lr, allowed=self.benchmark.seen_mask(task),
            momentum=tap.momentum, weight_decay=tap.weight_decay)

    def wtp_train(self, ctx: StageContext) -> None:
        method, task = self.method, ctx.task
        if task > 0 and ctx.start_epoch == 0:
            self.prompts.copy_prompt(task - 1, task)
        if self.prompts.gate_params is not None:
            # alpha and tau are shared by all tasks and learned during the first task only (faithful).
            self.prompts.gate_params.requires_grad_(task == 0)
        prompt_params = [p for p in self.prompts.parameters() if p.requires_grad]
        head_params = list(self.head.parameters())
        if self.cfg.optimizer.larger_prompt_lr:
            groups = [(prompt_params, 1.0), (head_params, 0.1)]  # the head learns at a tenth of the prompts' lr
        else:
            groups = [(prompt_params + head_params, 1.0)]
        momentum = method.prompt_momentum if task > 0 else 0.0
        self.prompts.train()
        self.head.train()
        # re-wrapped every task: the set of trainable parameters changes (alpha/tau freeze after task 0)
        step = data_parallel({"prompts": self.prompts, "head": self.head}, self.wtp_loss(task, momentum))

        # the momentum mix is folded into the stored prompt before the last checkpoint of the stage
        commit = lambda: self.prompts.commit_momentum(task, momentum)  # noqa: E731
        epochs = self.train_epochs(ctx, step, groups, desc="WTP", before_last_checkpoint=commit)
        if epochs == 0:
            self.prompts.commit_momentum(task, momentum)

    def wtp_loss(self, task: int, momentum: float):
        """The WTP loss of a batch of task ``task``: masked cross-entropy plus ``reg`` times the contrastive term
        over the stored class means and the (global) batch's features."""
        method = self.method
        allowed = self.benchmark.class_mask(task)
        means = self.wtp_statistics.mean_matrix(self.device)
        reg, temperature = float(method.reg), float(method.contrastive_temperature)

        def loss_fn(x, y):
            feats = self.task_features(x, task, momentum)
            loss = shard_cross_entropy(masked_logits(self.head(feats), allowed), y)
            if reg:
                # every rank computes the contrastive term over the whole global batch
                loss = loss + reg * contrastive_loss(all_gather_with_grad(feats), means, temperature)
            return loss

        return loss_fn

    def benchmark_step(self, task: int):
        params = [p for m in (self.prompts, self.head) for p in m.parameters() if p.requires_grad]
        return self.wtp_loss(task, self.method.prompt_momentum if task > 0 else 0.0), params

    @torch.no_grad()
    def wtp_stats(self, ctx: StageContext) -> None:
        task = ctx.task
        generator = ctx.seed_epoch()
        fn = lambda x: self.task_features(x, task)  # noqa: E731
        if self.method.prefix_layout == "per_sample":
            # a sample's features do not depend on its batch: one pass over the task in dataset order
            feats, labels = self.extract_all(fn, self.statistics_loader(task), f"task {task} WTP statistics")
        else:
            # the reference's batches, which decide each sample's (key, key) / (value, value) prefixes in this
            # layout: one shuffled loader per class, batches of train.batch_size, the last one partial
            parts = [self.extract_all(fn, self.statistics_loader(task, [c], generator),
                                      f"task {task} WTP statistics, class {c}")
                     for c in self.benchmark.task_classes[task]]
            feats, labels = torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])
        self.wtp_statistics.fit(feats, labels)
        self._save_statistics(ctx, "wtp")

    def wtp_tap(self, ctx: StageContext) -> None:
        task, tap = ctx.task, self.method.tap
        if task == 0:
            return
        train_on_statistics(
            self, ctx, self.head, self.wtp_statistics, self.seen_classes(task), self.earlier_classes(task),
            n_per_class=tap.samples_per_class_factor * self.batch_size, epochs=tap.epochs, lr=tap.lr,
            allowed=self.benchmark.seen_mask(task), momentum=tap.momentum, weight_decay=tap.weight_decay)
