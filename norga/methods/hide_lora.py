"""HiDe-LoRA: HiDe-Prompt's learner (task-identity inference, within-task prediction, task-adaptive prediction)
with a task's LoRA slot in place of its prefix prompts (docs/algorithm.md#hide-lora).

* WTP model: a pool of ``num_tasks`` LoRA slots on k and v of ``method.lora_layers`` (rank r, scale 1/r, up zero,
  down kaiming-uniform with fan-in r) and a linear head over all classes. Task t trains slot t (a copy of slot
  t-1 for t > 0) and the head with the task-masked cross-entropy plus ``reg`` times the contrastive term; then
  slot_t <- (1 - m) slot_t + m mean(slot_0..slot_{t-1}), its class statistics, and TAP on the head.
* TII model (``method.tii_source``): ``lora``, a task-shared LoRA g on the same blocks with its own linear head
  (the official HiDe-PET), or ``mlp``, HiDe-Prompt's MLP on the frozen backbone's features.
* Inference: TII logits over the seen classes -> class -> its task -> that task's slot -> head logits over all
  classes (``method.mask_unseen_at_test`` masks the unseen ones).

The stages are HiDe-Prompt's (``tii_train -> tii_stats -> tii_tap -> wtp_train -> wtp_stats -> evaluate_pre_tap
-> wtp_tap -> evaluate``); this class reuses its statistics, TAP, loss and prediction code and replaces the
models. HiDe-Prompt's constructor (prompt pool, prefix attention) is not run.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import nn

from norga.engine.distributed import data_parallel
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import BY_GLOBAL_BATCH, UNSCALED
from norga.engine.stages import StageContext
from norga.methods.base import Learner, tensor_digest
from norga.methods.hide_prompt import HiDePrompt
from norga.methods.statistics import ClassStatistics
from norga.methods.tap import train_on_statistics
from norga.models.peft.lora import LoRALayers
from norga.models.peft.lora_pool import LoRAPool
from norga.models.tii import TIIHead
from norga.models.vit import build_head, check_layers

#: the attention projections every HiDe-LoRA LoRA sits on
TARGETS = ("k", "v")


class HiDeLoRA(HiDePrompt):
    """HiDe-Prompt's stages over a pool of per-task LoRA slots; no gate (refused by the schema and the engine)."""

    name = "hide_lora"
    takes_gate = False

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        Learner.__init__(self, cfg, backbone, benchmark, device)  # not HiDePrompt's: no prompts here
        method = self.method
        check_layers("method.lora_layers", method.lora_layers, backbone)
        num_classes, num_tasks, dim = benchmark.num_classes, benchmark.num_tasks, backbone.embed_dim
        rank, layers = int(method.rank), list(method.lora_layers)
        fc_norm = cfg.backbone.get("reference_fc_norm", False)
        # HiDe-PET's init: up zero, down kaiming-uniform (a = sqrt 5) on the (d, r) matrix, so fan-in = r
        lora = {"layers": layers, "targets": TARGETS, "rank": rank, "scale": 1.0 / rank, "down_init": "kaiming_rank"}
        self.tii_source = str(method.tii_source)
        self.tii_lora: LoRALayers | None = None
        if self.tii_source == "lora":
            self.tii_lora = LoRALayers(self.backbone, **lora).to(device)
            self.tii: nn.Module = build_head(dim, num_classes, fc_norm).to(device)
        else:
            self.tii = TIIHead(dim, num_classes, list(method.tii.mlp_structure)).to(device)
        self.pool = LoRAPool(self.backbone, num_tasks, **lora).to(device)
        self.head = build_head(dim, num_classes, fc_norm).to(device)
        self.tii_statistics = ClassStatistics(method.statistics, method.n_centroids, cfg.seed)
        self.wtp_statistics = ClassStatistics(method.statistics, method.n_centroids, cfg.seed)
        self._tii_features: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.batchwise_prompt = bool(method.batchwise_prompt)
        self.eval_cacheable = True  # a sample's slot features do not depend on its batch
        # as HiDe-Prompt: the reference scales TII and WTP training by the batch / 256 and not the WTP TAP; g's TAP
        # (the same function as the WTP TAP in HiDe-PET) is not scaled either, the MLP's TAP is (HiDe-Prompt's)
        self.lr_scaling = {"tii_train": BY_GLOBAL_BATCH, "wtp_train": BY_GLOBAL_BATCH, "wtp_tap": UNSCALED,
                           "tii_tap": UNSCALED if self.tii_source == "lora" else BY_GLOBAL_BATCH}

    @classmethod
    def instead(cls, option: str, value) -> str:
        if option == "gate":
            return f"HiDe-LoRA has no prefix prompts for the NoRGa gate; use method=norga gate={value}, or drop gate="
        return Learner.instead(option, value)

    def modules(self) -> dict[str, nn.Module]:
        modules = {"tii": self.tii, "pool": self.pool, "head": self.head}
        if self.tii_lora is not None:
            modules["tii_lora"] = self.tii_lora
        return modules

    # ---- prediction: TII (HiDePrompt.select over self.tii) picks the task, its slot gives the features -----------
    def query(self, x: torch.Tensor) -> torch.Tensor:
        if self.tii_lora is None:
            return self.backbone_features(x)
        with torch.no_grad():
            return self.tii_features(x)

    def query_version(self) -> Hashable:
        # with the lora source the query is g's features, which every task's training changes
        if self.tii_lora is None:
            return "frozen"
        return tensor_digest(*(p for p in self.tii_lora.parameters()))

    def features(self, x, selection, query) -> torch.Tensor:
        return self.slot_features(x, selection[:, 0])

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        (slot,) = selection
        return tensor_digest(*self.pool.slot_tensors(slot))

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        logits = self.head(features)
        if self.method.mask_unseen_at_test:
            logits = masked_logits(logits, self.benchmark.seen_mask(upto_task))
        return logits

    # ---- forward paths -----------------------------------------------------------------------------------
    def tii_features(self, x: torch.Tensor) -> torch.Tensor:
        """The TII LoRA g's features (with gradient)."""
        with self.amp():
            return self._vit(self.backbone, x, peft=self.tii_lora.plan()).float()

    def slot_features(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Features of sample i under slot ``slots[i]``."""
        with self.amp():
            return self._vit(self.backbone, x, peft=self.pool.plan_for_ids(slots)).float()

    def task_features(self, x: torch.Tensor, task: int, momentum: float = 0.0) -> torch.Tensor:
        """Every sample under slot ``task`` (with gradient); ``momentum`` is HiDe-Prompt's, unused: the slot mix
        happens once, after training."""
        with self.amp():
            return self._vit(self.backbone, x, peft=self.pool.plan(task)).float()

    # ---- TII stages (the mlp source is HiDe-Prompt's) ------------------------------------------------------------
    def tii_train(self, ctx: StageContext) -> None:
        if self.tii_lora is None:
            return super().tii_train(ctx)
        tii, task = self.method.tii, ctx.task
        allowed = self.benchmark.class_mask(task)
        self.tii_lora.train()
        self.tii.train()

        def loss_fn(x, y):
            return shard_cross_entropy(masked_logits(self.tii(self.tii_features(x)), allowed), y)

        step = data_parallel({"tii_lora": self.tii_lora, "tii": self.tii}, loss_fn)
        lora_params, head_params = list(self.tii_lora.parameters()), list(self.tii.parameters())
        # the reference's first_sl: from task 1 on g's LoRA learns slowly, its head at the full lr
        groups = [(lora_params, float(tii.slow_lr) if task > 0 else 1.0), (head_params, 1.0)]
        self.train_epochs(ctx, step, groups, desc="TII", epochs=tii.epochs, lr=tii.lr, schedule=tii.scheduler,
                          clip_grad=tii.clip_grad)

    @torch.no_grad()
    def tii_stats(self, ctx: StageContext) -> None:
        if self.tii_lora is None:
            return super().tii_stats(ctx)
        ctx.seed_epoch()
        feats, labels = self.extract_all(self.tii_features, self.statistics_loader(ctx.task),
                                         f"task {ctx.task + 1} TII statistics")
        self.tii_statistics.fit(feats, labels)
        self._save_statistics(ctx, "tii")

    def tii_tap(self, ctx: StageContext) -> None:
        if self.tii_lora is None:
            return super().tii_tap(ctx)
        task, tap = ctx.task, self.method.tii.tap
        if task == 0:
            return
        train_on_statistics(
            self, ctx, self.tii, self.tii_statistics, self.seen_classes(task), self.earlier_classes(task),
            n_per_class=self.method.tap.samples_per_class_factor * self.batch_size, epochs=tap.epochs, lr=tap.lr,
            allowed=self.benchmark.seen_mask(task), momentum=tap.momentum, weight_decay=tap.weight_decay)

    # ---- WTP stages (the TAP is HiDe-Prompt's) -------------------------------------------------------------------
    def wtp_train(self, ctx: StageContext) -> None:
        task = ctx.task
        if task > 0 and ctx.start_epoch == 0:
            self.pool.copy_slot(task - 1, task)
        slot_params = self.pool.train_only(task)
        self.pool.train()
        self.head.train()
        step = data_parallel({"pool": self.pool, "head": self.head}, self.wtp_loss(task, 0.0))
        momentum = float(self.method.lora_momentum)
        # the mix is folded into slot t before the stage's last checkpoint, so a resume never applies it twice
        commit = lambda: self.pool.mix_with_earlier(task, momentum)  # noqa: E731
        epochs = self.train_epochs(ctx, step, slot_params + list(self.head.parameters()), desc="WTP",
                                   before_last_checkpoint=commit)
        if epochs == 0:
            commit()

    def benchmark_step(self, task: int):
        return self.wtp_loss(task, 0.0), self.pool.train_only(task) + list(self.head.parameters())

    @torch.no_grad()
    def wtp_stats(self, ctx: StageContext) -> None:
        task = ctx.task
        ctx.seed_epoch()
        feats, labels = self.extract_all(lambda x: self.task_features(x, task), self.statistics_loader(task),
                                         f"task {task + 1} WTP statistics")
        self.wtp_statistics.fit(feats, labels)
        self._save_statistics(ctx, "wtp")
