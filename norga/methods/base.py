"""The learner contract: what a continual-learning method gives the engine, and what the engine gives back.

A learner is one class (``conf/method/<name>.yaml`` names it in ``_target_``), built as
``Learner(cfg, backbone, benchmark, device)``. The engine (:mod:`norga.engine.run`) drives it task by task:

* **Stages.** :meth:`Learner.stages` lists the stages of task ``t`` (:class:`~norga.engine.stages.Stage`,
  names of the learner's choosing, ending with the engine's evaluation). The engine runs each learner stage
  through :meth:`Learner.run_stage` with a :class:`~norga.engine.stages.StageContext`, and checkpoints a
  cursor (task, stage, epoch) after every epoch and every stage. A stage that trains supplies its loss and
  parameters to :meth:`Learner.train_epochs`, the engine's one epoch loop
  (:func:`~norga.engine.loops.run_epochs`), which owns the rest: the ``train.max_epochs`` cap, the seed of
  every epoch, resuming from ``ctx.start_epoch`` with the optimiser restored, crash points, the lr (scaled as
  :attr:`Learner.lr_scaling` declares) and its schedule, clipping, non-finite checks, progress and
  ``ctx.epoch_end``. So every learner resumes exactly, mid-stage included.
* **Options.** ``method.gate`` and ``method.batchwise_prompt`` are in every method's schema; the engine refuses
  them for a learner that does not declare :attr:`Learner.takes_gate` / :attr:`Learner.takes_batchwise_prompt`.
* **State.** :meth:`Learner.modules` are the learned modules, saved in every checkpoint (with the stage's
  optimiser and scheduler). Large state that never changes once computed (class statistics) is written once
  with ``ctx.save_artifact`` and handed back on resume through :meth:`Learner.load_artifact`.
* **Prediction.** The engine's evaluator (:mod:`norga.engine.evaluate`) scores a learner through five
  functions, so that frozen work is computed once per run:

  1. :meth:`query`: features of a test image that no training changes (the frozen backbone's class token),
     cached per test set while :meth:`query_version` stays the same;
  2. :meth:`select`: from the query, the prompt(s) each sample uses, ``(n, k)`` ids, or ``None``;
  3. :meth:`features`: the (prompted) features of images under a selection; cached per test set and
     selection while :meth:`features_version` of that selection stays the same (``None``: never cached);
  4. :meth:`logits`: class logits from those features;
  5. :meth:`selected_task`: the task a selection stands for, if the learner identifies tasks (for the
     task-identification accuracy), else ``None``.

  A learner that runs the ViT once per adapter (features = the concatenation over the selected ids) sets
  :attr:`features_per_id`: each id's features are then cached on their own.

  The true task id of a test sample is never passed to any of them.

Training helpers shared by learners (loaders that shard under torchrun, feature extraction, bf16 autocast)
live here too; the engine's loops and data-parallel utilities are in :mod:`norga.engine`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import ClassVar

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import Subset

from norga.data import Benchmark
from norga.engine.distributed import all_gather_cat, is_distributed, shard_loader
from norga.engine.logging import progress_bars
from norga.engine.loops import Batches, Schedule, autocast, extract_features, run_epochs
from norga.engine.optim import BY_GLOBAL_BATCH, LrScaling
from norga.engine.stages import Stage, StageContext
from norga.models.vit import vit_features


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """A digest of tensors' values: equal digests mean features computed from them are still valid."""
    h = hashlib.sha1()
    for t in tensors:
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Learner:
    """Base class of every method. Subclasses set :attr:`name`, implement :meth:`stages`, one method per
    learner stage (called with the stage's context; :meth:`run_stage` dispatches by name), :meth:`modules`,
    and the prediction functions they need beyond the defaults."""

    name: ClassVar[str] = ""
    #: the whole evaluation batch uses its most frequent selection (the reference's test-time voting)
    batchwise_prompt: bool = False
    #: True when a selection's order matters (the reference prefix layout): top-k and majority keep it
    ordered_selection: bool = False
    #: False when a sample's features depend on the rest of its batch: evaluation then runs batch by batch
    eval_cacheable: bool = True
    #: False when :meth:`features` needs only the query (no pass over the images)
    features_need_images: bool = True
    #: True when the features of a selection row ``(i, j, ...)`` are the concatenation of the features under
    #: ``(i,)``, ``(j,)``, ...: one ViT pass per adapter (EASE, MOS, TUNA). The evaluator then calls
    #: :meth:`features` with single-id selections ``(n, 1)`` only and caches each id's features per test set
    #: while ``features_version((id,))`` holds, so a frozen adapter's pass over a test set is run once per run
    features_per_id: bool = False
    #: how the configured lr of each training stage follows the global batch size: one rule for every stage,
    #: or stage name -> rule; applied once, by the epoch loop (:meth:`train_epochs`)
    lr_scaling: ClassVar[LrScaling | Mapping[str, LrScaling]] = BY_GLOBAL_BATCH
    #: options of every method's schema that this learner takes; the engine refuses the others before building
    #: it (:mod:`norga.engine.options`), with :meth:`instead` as the advice
    takes_gate: ClassVar[bool] = False
    takes_batchwise_prompt: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig, backbone: VisionTransformer, benchmark: Benchmark,
                 device: torch.device) -> None:
        self.cfg = cfg
        self.method = cfg.method
        self.benchmark = benchmark
        self.device = device
        self.backbone = backbone.to(device)
        # plain values, read on every forward (OmegaConf access inside a compiled region breaks the graph)
        self.precision = str(cfg.train.precision)
        self.progress = progress_bars(cfg.progress)
        self.batch_size = int(cfg.train.batch_size)
        self._vit = torch.compile(vit_features) if cfg.train.compile else vit_features

    @classmethod
    def instead(cls, option: str, value) -> str:
        """What to do instead of setting ``method.<option>``, which this learner does not take."""
        if option == "gate":
            return (f"the NoRGa gate acts on prefix prompts and is a method of its own; use method=norga "
                    f"gate={value}, or drop gate=")
        if option == "batchwise_prompt":
            return ("it selects no prompts, so there is no selection for a test batch to vote on; drop "
                    "method.batchwise_prompt=true")
        return f"drop method.{option}"

    # ---- the contract -----------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        """The stages of ``task``, in order; the last is the engine's evaluation (``evaluation()``)."""
        raise NotImplementedError

    def run_stage(self, ctx: StageContext) -> None:
        """Run learner stage ``ctx.stage``: by default the method of that name."""
        getattr(self, ctx.stage)(ctx)

    def modules(self) -> dict[str, nn.Module]:
        """The learned modules, by name: saved in every checkpoint, restored on resume."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {name: module.state_dict() for name, module in self.modules().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state[name])

    def load_artifact(self, name: str, state: dict) -> None:
        """Take back a file this learner wrote with ``ctx.save_artifact`` (when resuming)."""
        raise ValueError(f"{type(self).__name__} wrote no artifact called {name!r}")

    def eval_mode(self) -> None:
        for module in self.modules().values():
            module.eval()

    def benchmark_step(self, task: int) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                                                 list[nn.Parameter]] | None:
        """The loss function ``(x, y) -> loss`` of the learner's main training step for ``task`` and the
        parameters it trains, as its training stage uses them (``benchmarks/step.py`` times it); None for a
        learner that does not train."""
        return None

    # ---- prediction (see the module docstring) -----------------------------------------------------------
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Features that no training changes: the frozen backbone's class token."""
        return self.backbone_features(x)

    def query_version(self) -> Hashable:
        """Changes whenever :meth:`query` would give other features (never, for a frozen backbone)."""
        return "frozen"

    def select(self, query: torch.Tensor, upto_task: int) -> torch.Tensor | None:
        """The prompt ids each sample uses, ``(n, k)`` (rows sorted; in similarity order with
        :attr:`ordered_selection`), or None for learners without prompts.
        ``upto_task`` is the last task trained (never a test sample's task)."""
        return None

    def selected_task(self, selection: torch.Tensor | None) -> torch.Tensor | None:
        """The task each selection identifies, ``(n,)``, or None if the learner does not identify tasks."""
        return None

    def features(self, x: torch.Tensor | None, selection: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor:
        """Features of images ``x`` (``None`` when :attr:`features_need_images` is False) under ``selection``
        (rows aligned with ``x``), given their ``query``."""
        raise NotImplementedError

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        """Changes whenever :meth:`features` under this selection would give other features; None: never
        reuse them."""
        return None

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        """Class logits ``(n, C)`` from features."""
        raise NotImplementedError

    # ---- forward helpers ---------------------------------------------------------------------------------
    def amp(self):
        """bf16 autocast when ``train.precision`` asks for it."""
        return autocast(self.device, self.precision)

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's pre-logit feature (class token after the final norm), fp32, no gradient."""
        with torch.no_grad(), self.amp():
            return self._vit(self.backbone, x).float()

    # ---- training helpers --------------------------------------------------------------------------------
    def lr_rule(self, stage: str) -> LrScaling:
        """How stage ``stage``'s configured lr follows the global batch size (:attr:`lr_scaling`)."""
        rule = self.lr_scaling
        if isinstance(rule, LrScaling):
            return rule
        if stage not in rule:
            raise ValueError(f"{type(self).__name__}.lr_scaling names the stages {sorted(rule)}, not {stage!r}, which "
                             "trains: declare how its learning rate follows the batch size")
        return rule[stage]

    def train_epochs(self, ctx: StageContext, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     params: Sequence[nn.Parameter] | Sequence[tuple[Sequence[nn.Parameter], float]], *, desc: str,
                     batches: Batches | None = None, epochs: int | None = None, lr: float | None = None,
                     schedule: Schedule | str = "scheduler", optimizer=None, clip_grad: float | None | str = "train",
                     limit_batches: bool = True, before_last_checkpoint: Callable[[], None] | None = None) -> int:
        """Run a training stage through the engine's epoch loop (:func:`norga.engine.loops.run_epochs`, which
        caps, seeds, resumes, schedules, clips and checkpoints it); returns its epoch count.

        ``step``: the loss of a batch; ``params``: the trained parameters, or ``(params, lr factor)`` groups.
        Defaults, each overridable: the task's augmented training batches (:meth:`train_loader`),
        ``train.epochs``, ``optimizer.lr`` (scaled as :attr:`lr_scaling` declares for ``ctx.stage``), the
        ``optimizer`` node, ``scheduler`` and ``train.clip_grad``."""
        cfg = self.cfg
        groups = list(params)
        if not groups or not isinstance(groups[0], tuple):
            groups = [(groups, 1.0)]
        if batches is None:
            batches = lambda generator: self.train_loader(ctx.task, generator)  # noqa: E731
        return run_epochs(
            ctx, step, batches, groups,
            epochs=cfg.train.epochs if epochs is None else epochs,
            lr=cfg.optimizer.lr if lr is None else lr, lr_scaling=self.lr_rule(ctx.stage),
            global_batch_size=self.batch_size,
            optimizer=instantiate(cfg.optimizer.partial) if optimizer is None else optimizer,
            schedule=cfg.scheduler if schedule == "scheduler" else schedule,
            clip_grad=cfg.train.clip_grad if clip_grad == "train" else clip_grad,
            device=self.device, desc=desc, limit_batches=limit_batches,
            before_last_checkpoint=before_last_checkpoint)

    def train_loader(self, task: int, generator: torch.Generator, augment: bool = True):
        """Shuffled batches of task ``task``'s training set, of the global ``train.batch_size``; under
        torchrun each rank loads its share of every batch (one process gets exactly the same batches).
        Augmentation is drawn per sample from the generator's seed, not from the loading process."""
        dataset = self.benchmark.train_set(task, augment=augment)
        if augment:
            dataset.seed_augmentation(int(generator.initial_seed()))
        return shard_loader(dataset, self.batch_size, self.device, self.cfg.train.num_workers, shuffle=True,
                            generator=generator)

    def statistics_loader(self, task: int, classes: list[int] | None = None,
                          generator: torch.Generator | None = None, batch_size: int | None = None):
        """Task ``task``'s training images (or those of ``classes``) with the evaluation transform, in dataset
        order (shuffled by ``generator`` when given), in batches of ``batch_size`` (default ``train.batch_size``).
        Every class must be present, so ``train.max_batches`` does not apply; ``train.max_stats_per_class``
        (smoke tests) keeps the first images of each class instead."""
        if classes is None:
            dataset = self.benchmark.train_set(task, augment=False)
        else:
            dataset = self.benchmark.train_set_of_classes(classes, augment=False)
        limit = self.cfg.train.max_stats_per_class
        if limit is not None:
            keep = [i for c in dataset.labels.unique().tolist()
                    for i in (dataset.labels == c).nonzero().flatten()[:limit].tolist()]
            dataset = Subset(dataset, sorted(keep))
        return shard_loader(dataset, batch_size or self.batch_size, self.device, self.cfg.train.num_workers,
                            shuffle=generator is not None, generator=generator)

    def extract_all(self, fn: Callable[[torch.Tensor], torch.Tensor], loader,
                    desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``fn`` over a (sharded) loader's images; under torchrun gathered from all ranks in dataset order."""
        feats, labels = extract_features(fn, loader, self.device, desc, progress=self.progress)
        if not is_distributed():
            return feats, labels
        seen = loader.batch_sampler.local_indices()[:len(feats)]
        order = all_gather_cat(seen.to(self.device)).cpu().argsort()
        return (all_gather_cat(feats.to(self.device)).cpu()[order],
                all_gather_cat(labels.to(self.device)).cpu()[order])

    def earlier_classes(self, task: int) -> int:
        """How many classes the tasks before ``task`` hold."""
        return sum(len(c) for c in self.benchmark.task_classes[:task])

    def seen_classes(self, task: int) -> list[int]:
        return self.benchmark.seen_classes(task)
