"""HiDe-Prompt: task-identity inference (TII), within-task prediction (WTP) with prefix prompts, and
task-adaptive prediction (TAP) on features sampled from per-class Gaussians.

NoRGa (``norga.methods.norga``) is this learner with a non-linear residual gate on the prefix logits.
The engine calls the stages of each task in order (``norga.engine.seeding.STAGES``); each stage seeds its
own randomness per epoch, so stages are independent of what ran before them.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import Subset, TensorDataset

from norga.engine.distributed import (
    all_gather_cat,
    all_gather_with_grad,
    data_parallel,
    is_distributed,
    shard_loader,
)
from norga.engine.loops import (
    autocast,
    extract_features,
    masked_logits,
    shard_cross_entropy,
    train_epoch,
    train_on_statistics,
)
from norga.engine.optim import build_optimizer, scaled_lr, set_epoch_lr
from norga.engine.seeding import seed_stage
from norga.engine.stages import StageContext
from norga.methods.statistics import ClassStatistics
from norga.models.attention import configure_prefix_attention, describe_prefix_impl
from norga.models.prompts import PromptPool
from norga.models.tii import TIIHead
from norga.models.vit import head_geometry, init_linear, vit_features

log = logging.getLogger(__name__)


def contrastive_loss(features: torch.Tensor, class_means: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Cross-entropy of ``M M^T / temperature`` against the identity, M = [stored means; batch features]."""
    m = features if class_means is None else torch.cat([class_means.to(features), features])
    sim = m @ m.T / temperature
    return F.cross_entropy(sim, torch.arange(len(m), device=m.device))


class HiDePrompt:
    """The three-part learner of HiDe-Prompt; ``gate`` is None here and set by NoRGa."""

    name = "hide"

    def __init__(self, cfg: DictConfig, backbone: VisionTransformer, benchmark, device: torch.device) -> None:
        self.cfg = cfg
        self.benchmark = benchmark
        self.device = device
        self.backbone = backbone.to(device)
        method = cfg.method
        dim, heads, head_dim = head_geometry(backbone)
        depth = len(backbone.blocks)
        bad = [i for i in method.prompt_layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"method.prompt_layers {list(method.prompt_layers)} has {bad} outside the "
                             f"backbone's {depth} blocks (0..{depth - 1})")
        num_classes, num_tasks = benchmark.num_classes, benchmark.num_tasks
        self.tii = TIIHead(dim, num_classes, list(cfg.tii.mlp_structure)).to(device)
        self.prompts = PromptPool(list(method.prompt_layers), num_tasks, method.prompt_length, heads, head_dim,
                                  gate=self.gate_name(), layout=method.prefix_layout).to(device)
        self.head = nn.Linear(dim, num_classes).to(device)
        init_linear(self.head)
        self.tii_statistics = ClassStatistics(method.statistics, method.n_centroids, cfg.seed)
        self.wtp_statistics = ClassStatistics(method.statistics, method.n_centroids, cfg.seed)
        self._tii_features: tuple[int, torch.Tensor, torch.Tensor] | None = None
        # plain values, read on every forward (OmegaConf access inside a compiled region breaks the graph)
        self.precision = str(cfg.train.precision)
        attention = configure_prefix_attention(self.backbone, cfg.train.attention, device)
        log.info("prefix attention: %s", describe_prefix_impl(attention, device))
        # Compile the ViT forward only: prompt selection (task ids) stays outside, so no recompilation per task.
        self._vit = torch.compile(vit_features) if cfg.train.compile else vit_features

    def gate_name(self) -> str | None:
        if self.cfg.method.gate is not None:
            raise ValueError(f"method=hide is plain prefix tuning and takes no gate (got method.gate="
                             f"{self.cfg.method.gate}); use method=norga gate={self.cfg.method.gate}")
        return None

    # ---- state -------------------------------------------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"tii": self.tii, "prompts": self.prompts, "head": self.head}

    def state_dict(self, stats_classes: list[int] | None = None) -> dict:
        """Trainable modules and the class statistics of ``stats_classes`` (default: all classes)."""
        state = {name: m.state_dict() for name, m in self.trainable_modules().items()}
        state["tii_stats"] = self.tii_statistics.state_dict(stats_classes)
        state["wtp_stats"] = self.wtp_statistics.state_dict(stats_classes)
        return state

    def load_state_dict(self, state: dict, merge_stats: bool = False) -> None:
        """Restore modules and statistics; ``merge_stats`` adds the classes to those already loaded."""
        for name, module in self.trainable_modules().items():
            module.load_state_dict(state[name])
        self.tii_statistics.load_state_dict(state["tii_stats"], merge=merge_stats)
        self.wtp_statistics.load_state_dict(state["wtp_stats"], merge=merge_stats)

    def statistics(self, kind: str) -> ClassStatistics:
        """The class statistics of the ``tii`` or the ``wtp`` model."""
        return {"tii": self.tii_statistics, "wtp": self.wtp_statistics}[kind]

    # ---- forward paths used by training and the evaluator ----------------------------------------------
    def _amp(self):
        return autocast(self.device, self.precision)

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._amp():
            return self._vit(self.backbone, x).float()

    def tii_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.tii(features)

    def prompted_features(self, x: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        with self._amp():
            return self._vit(self.backbone, x, self.prompts.prefixes_for_ids(prompt_ids)).float()

    def task_features(self, x: torch.Tensor, task: int, momentum: float = 0.0) -> torch.Tensor:
        with self._amp():
            return self._vit(self.backbone, x, self.prompts.prefixes_for_task(task, len(x), momentum)).float()

    def wtp_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    # ---- helpers -----------------------------------------------------------------------------------
    def _train_loader(self, task: int, augment: bool, generator: torch.Generator | None):
        """Batches of the global ``train.batch_size``; under torchrun each rank loads its share of every
        batch (one process gets exactly the same batches)."""
        dataset = self.benchmark.train_set(task, augment=augment)
        if augment and generator is not None:
            dataset.seed_augmentation(int(generator.initial_seed()))
        return shard_loader(dataset, self.cfg.train.batch_size, self.device, self.cfg.train.num_workers,
                            shuffle=generator is not None, generator=generator)

    def _statistics_loader(self, task: int):
        """The task's training images with the evaluation transform, for statistics. Every class must be
        present, so ``train.max_batches`` does not apply; ``train.max_stats_per_class`` (smoke tests) keeps the
        first images of each class instead."""
        dataset = self.benchmark.train_set(task, augment=False)
        limit = self.cfg.train.max_stats_per_class
        if limit is not None:
            keep = [i for c in dataset.labels.unique().tolist()
                    for i in (dataset.labels == c).nonzero().flatten()[:limit].tolist()]
            dataset = Subset(dataset, sorted(keep))
        return shard_loader(dataset, self.cfg.train.batch_size, self.device, self.cfg.train.num_workers)

    def _extract_all(self, fn, loader, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of a loader's samples; under torchrun gathered from all ranks in dataset order."""
        feats, labels = extract_features(fn, loader, self.device, desc, progress=self.cfg.progress)
        if not is_distributed():
            return feats, labels
        seen = loader.batch_sampler.local_indices()[:len(feats)]
        order = all_gather_cat(seen.to(self.device)).cpu().argsort()
        return all_gather_cat(feats.to(self.device)).cpu()[order], all_gather_cat(labels.to(self.device)).cpu()[order]

    def _seed(self, task: int, stage: str, epoch: int = 0) -> torch.Generator:
        return seed_stage(self.cfg.seed, task, stage, epoch)

    def _earlier_classes(self, task: int) -> int:
        return sum(len(c) for c in self.benchmark.task_classes[:task])

    def _seen_classes(self, task: int) -> list[int]:
        return [c for classes in self.benchmark.task_classes[:task + 1] for c in classes]

    # ---- stages ------------------------------------------------------------------------------------
    # Each stage takes a StageContext: it starts at ctx.start_epoch (restoring the optimiser state the
    # engine hands back when resuming) and calls ctx.epoch_end after every epoch.

    def tii_train(self, ctx: StageContext) -> None:
        cfg, tii, task = self.cfg, self.cfg.tii, ctx.task
        lr = scaled_lr(tii.lr, cfg.train.batch_size)
        optimizer = build_optimizer(cfg.optimizer, [(list(self.tii.parameters()), lr)])
        ctx.attach(optimizer)
        allowed = self.benchmark.class_mask(task)
        self.tii.train()
        if tii.feature_cache:
            # one backbone pass without augmentation, then MLP epochs on the cached features
            features, labels = self._backbone_train_features(task)
            cached = TensorDataset(features, labels)

        def loss_fn(x, y):
            feats = x if tii.feature_cache else self.backbone_features(x)
            return shard_cross_entropy(masked_logits(self.tii(feats), allowed), y)

        step = data_parallel({"tii": self.tii}, loss_fn)

        for epoch in range(ctx.start_epoch, tii.epochs):
            gen = self._seed(task, "tii_train", epoch)
            lr_now = set_epoch_lr(optimizer, tii.scheduler, epoch, tii.epochs)
            if tii.feature_cache:
                loader = shard_loader(cached, cfg.train.batch_size, torch.device("cpu"), shuffle=True,
                                      generator=gen)
            else:
                loader = self._train_loader(task, True, gen)
            # the reference clips the TII gradients with the same clip_grad as the prompts
            loss = train_epoch(step, loader, optimizer, list(self.tii.parameters()), self.device,
                               cfg.train.clip_grad, f"task {task} TII epoch {epoch + 1}/{tii.epochs}",
                               cfg.train.max_batches, cfg.progress, point=f"{ctx.point}/epoch{epoch}")
            ctx.epoch_end(epoch, {"loss": loss, "lr": lr_now})

    @torch.no_grad()
    def _backbone_train_features(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen backbone's features of task ``task``'s training images (evaluation transform); kept
        for the task's statistics stage, which needs exactly these."""
        if self._tii_features is None or self._tii_features[0] != task:
            self._seed(task, "tii_stats")
            feats, labels = self._extract_all(self.backbone_features, self._statistics_loader(task),
                                              f"task {task} backbone features")
            self._tii_features = (task, feats, labels)
        return self._tii_features[1], self._tii_features[2]

    @torch.no_grad()
    def tii_stats(self, ctx: StageContext) -> None:
        feats, labels = self._backbone_train_features(ctx.task)
        self._tii_features = None
        self.tii_statistics.fit(feats, labels)

    def tii_tap(self, ctx: StageContext) -> None:
        task, cfg = ctx.task, self.cfg
        if task == 0:
            return
        train_on_statistics(
            self.tii, self.tii_statistics, self._seen_classes(task), self._earlier_classes(task),
            n_per_class=cfg.train.batch_size, epochs=cfg.tii.tap.epochs,
            lr=scaled_lr(cfg.tii.tap.lr, cfg.train.batch_size), allowed=self.benchmark.seen_mask(task),
            device=self.device, seed_epoch=lambda e: self._seed(task, "tii_tap", e), ctx=ctx,
            momentum=cfg.tii.tap.momentum, weight_decay=cfg.tii.tap.weight_decay, progress=cfg.progress)

    def wtp_train(self, ctx: StageContext) -> None:
        cfg, method, task = self.cfg, self.cfg.method, ctx.task
        if task > 0 and ctx.start_epoch == 0:
            self.prompts.copy_prompt(task - 1, task)
        if self.prompts.gate_params is not None:
            # alpha and tau are shared by all tasks and learned during the first task only (faithful).
            self.prompts.gate_params.requires_grad_(task == 0)
        lr = scaled_lr(cfg.optimizer.lr, cfg.train.batch_size)
        prompt_params = [p for p in self.prompts.parameters() if p.requires_grad]
        head_params = list(self.head.parameters())
        if cfg.optimizer.larger_prompt_lr:
            groups = [(prompt_params, lr), (head_params, lr * 0.1)]
        else:
            groups = [(prompt_params + head_params, lr)]
        optimizer = build_optimizer(cfg.optimizer, groups)
        ctx.attach(optimizer)
        params = prompt_params + head_params
        momentum = method.prompt_momentum if task > 0 else 0.0
        allowed = self.benchmark.class_mask(task)
        means = self.wtp_statistics.mean_matrix(self.device)
        reg, temperature = float(method.reg), float(method.contrastive_temperature)
        self.prompts.train()
        self.head.train()

        def loss_fn(x, y):
            feats = self.task_features(x, task, momentum)
            loss = shard_cross_entropy(masked_logits(self.head(feats), allowed), y)
            if reg:
                # every rank computes the contrastive term over the whole global batch
                loss = loss + reg * contrastive_loss(all_gather_with_grad(feats), means, temperature)
            return loss

        # re-wrapped every task: the set of trainable parameters changes (alpha/tau freeze after task 0)
        step = data_parallel({"prompts": self.prompts, "head": self.head}, loss_fn)

        epochs = cfg.train.epochs
        for epoch in range(ctx.start_epoch, epochs):
            gen = self._seed(task, "wtp_train", epoch)
            lr_now = set_epoch_lr(optimizer, cfg.scheduler, epoch, epochs)
            loss = train_epoch(step, self._train_loader(task, True, gen), optimizer, params, self.device,
                               cfg.train.clip_grad, f"task {task} WTP epoch {epoch + 1}/{epochs}",
                               cfg.train.max_batches, cfg.progress, point=f"{ctx.point}/epoch{epoch}")
            if epoch == epochs - 1:
                # fold the momentum mix into the stored prompt before the last checkpoint of the stage
                self.prompts.commit_momentum(task, momentum)
            ctx.epoch_end(epoch, {"loss": loss, "lr": lr_now})
        if epochs == 0:
            self.prompts.commit_momentum(task, momentum)

    @torch.no_grad()
    def wtp_stats(self, ctx: StageContext) -> None:
        task = ctx.task
        self._seed(task, "wtp_stats")
        feats, labels = self._extract_all(lambda x: self.task_features(x, task),
                                          self._statistics_loader(task), f"task {task} WTP statistics")
        self.wtp_statistics.fit(feats, labels)

    def wtp_tap(self, ctx: StageContext) -> None:
        task, cfg = ctx.task, self.cfg
        if task == 0:
            return
        train_on_statistics(
            self.head, self.wtp_statistics, self._seen_classes(task), self._earlier_classes(task),
            n_per_class=cfg.tap.samples_per_class_factor * cfg.train.batch_size, epochs=cfg.tap.epochs,
            lr=cfg.tap.lr, allowed=self.benchmark.seen_mask(task), device=self.device,
            seed_epoch=lambda e: self._seed(task, "wtp_tap", e), ctx=ctx, momentum=cfg.tap.momentum,
            weight_decay=cfg.tap.weight_decay, progress=cfg.progress)

    def eval_mode(self) -> None:
        for module in self.trainable_modules().values():
            module.eval()
