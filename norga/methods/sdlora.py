"""SD-LoRA (Wu et al., ICLR 2025): each task trains a new LoRA on q and v of every block together with one
magnitude per task, shared by all blocks; the earlier tasks' directions stay frozen and normalised, only their
magnitudes move (docs/algorithm.md#sd-lora). The model is :class:`norga.models.sdlora.SDLoRA`.

A task is ``train -> evaluate``. ``train``: the task's LoRA A_t, B_t, every magnitude (alpha_t, beta_0..beta_{t-1})
and the whole linear classifier, with a cross-entropy over the task's own classes (task 0: all its logits;
t > 0: the logits after the earlier classes, as the authors' ``logits[:, known:]``), SGD with momentum, no weight
decay, MultiStepLR per epoch, lr not scaled by the batch, no gradient clipping (the authors'). Prediction: one
pass with every task's LoRA and the current magnitudes, argmax over the classes seen so far.

The classifier has a row for every class from the start (kaiming-uniform, nonlinearity linear, bias 0; the
authors grow it each task with fresh rows drawn the same way): a class's row gets a gradient only while its
task trains, so the rows of earlier and later tasks stay as they are, as in the authors' grown layer.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial

import torch
from torch import nn

from norga.engine.distributed import data_parallel
from norga.engine.loops import masked_logits, shard_cross_entropy
from norga.engine.optim import UNSCALED
from norga.engine.stages import Stage, StageContext, evaluation
from norga.methods.base import Learner, tensor_digest
from norga.models.sdlora import SDLoRA, task_ranks
from norga.models.vit import check_layers


def sdlora_head(dim: int, num_classes: int) -> nn.Linear:
    """The authors' SimpleLinear: kaiming-uniform weight (nonlinearity linear), bias 0."""
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():
        nn.init.kaiming_uniform_(head.weight, nonlinearity="linear")
        nn.init.zeros_(head.bias)
    return head


class SDLoRALearner(Learner):
    """SD-LoRA, and its rank-reduction variant (``method.rank_schedule=rr``)."""

    name = "sdlora"
    lr_scaling = UNSCALED  # the authors' init_lr / lrate at their batch of 128, whatever the batch

    def __init__(self, cfg, backbone, benchmark, device) -> None:
        super().__init__(cfg, backbone, benchmark, device)
        m = self.method
        layers = range(len(backbone.blocks)) if m.layers is None else check_layers("method.layers", m.layers, backbone)
        ranks = task_ranks(benchmark.num_tasks, int(m.rank), m.rank_schedule)
        self.lora = SDLoRA(self.backbone, layers, list(m.targets), ranks, float(m.magnitude_init),
                           str(m.direction_norm)).to(device)
        self.head = sdlora_head(backbone.embed_dim, benchmark.num_classes).to(device)
        self.keep_magnitudes = bool(m.keep_magnitudes)

    # ---- the contract ------------------------------------------------------------------------------------
    def stages(self, task: int) -> list[Stage]:
        return [Stage("train"), evaluation()]

    def modules(self) -> dict[str, nn.Module]:
        return {"lora": self.lora, "head": self.head}

    def select(self, query, upto_task):
        return None

    def features(self, x, selection, query) -> torch.Tensor:
        with torch.no_grad(), self.amp():
            return self._vit(self.backbone, x, peft=self.lora.plan()).float()

    def features_version(self, selection: tuple[int, ...]) -> Hashable | None:
        # every task's A and B, the magnitudes and how many tasks are in use: the magnitudes move every task
        return tensor_digest(self.lora.active, self.lora.magnitudes, *self.lora.parameters())

    def logits(self, features: torch.Tensor, upto_task: int) -> torch.Tensor:
        return masked_logits(self.head(features), self.benchmark.seen_mask(upto_task))

    # ---- training ----------------------------------------------------------------------------------------
    def loss_fn(self, task: int):
        """Cross-entropy over task ``task``'s classes of the classifier on the LoRA-adapted features."""
        allowed = self.benchmark.class_mask(task)

        def loss(x, y):
            with self.amp():
                feats = self._vit(self.backbone, x, peft=self.lora.plan()).float()
            return shard_cross_entropy(masked_logits(self.head(feats), allowed), y)

        return loss

    def start_task(self, task: int) -> list[nn.Parameter]:
        """Task ``task``'s LoRA in use, the magnitudes (re)started, and the parameters it trains."""
        self.lora.activate(task, reset_magnitudes=not self.keep_magnitudes)
        return [*self.lora.trainable(), *self.head.parameters()]

    def train(self, ctx: StageContext) -> None:
        m, task = self.method, ctx.task
        if ctx.start_epoch == 0:
            params = self.start_task(task)
        else:  # resumed inside the stage: the checkpoint holds this task's state already
            params = [*self.lora.trainable(), *self.head.parameters()]
        first = task == 0
        schedule = {"name": "multistep", "milestones": list(m.init_milestones if first else m.milestones),
                    "gamma": float(m.init_gamma if first else m.gamma)}
        self.lora.train()
        self.head.train()
        step = data_parallel({"lora": self.lora, "head": self.head}, self.loss_fn(task))
        self.train_epochs(ctx, step, params, desc="sdlora", lr=float(m.init_lr if first else m.lr),
                          schedule=schedule, clip_grad=None,
                          optimizer=partial(torch.optim.SGD, momentum=float(m.momentum),
                                            weight_decay=float(m.weight_decay)))
        self.lora.requires_grad_(False)

    def benchmark_step(self, task: int):
        params = self.start_task(task)
        return self.loss_fn(task), params
