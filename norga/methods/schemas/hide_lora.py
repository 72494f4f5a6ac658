"""Schema of ``method=hide_lora`` (docs/algorithm.md#hide-lora): HiDe-Prompt's three stages with a task's LoRA slot
in place of its prefix prompts. Torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from norga.methods.schemas import (
    MethodConfig,
    ScheduleConfig,
    TAPConfig,
    TIIConfig,
    TIITAPConfig,
    at_least,
    choice,
    layers,
    positive,
)


@dataclass
class HiDeLoRATIIConfig(TIIConfig):
    """The task-identity model. ``tii_source=lora`` (the reference): a task-shared LoRA ``g`` on the same blocks
    with its own linear head, trained ``epochs`` per task at ``lr`` (Adam, ``scheduler``, clip ``clip_grad``),
    from task 1 the LoRA at ``lr * slow_lr``; then its class statistics and TAP (``tap``, on ``g``'s head,
    ``method.tap.samples_per_class_factor`` x batch samples per class). ``tii_source=mlp``: HiDe-Prompt's MLP on
    the frozen backbone's features (``mlp_structure``, ``feature_cache``; TAP with batch samples per class)."""

    epochs: int = at_least(0, 50)
    lr: float = positive(0.03)  # scaled by batch / 256 (the reference: by the per-GPU batch)
    scheduler: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="constant"))
    tap: TIITAPConfig = field(default_factory=TIITAPConfig)
    clip_grad: float | None = positive(2.0)
    # lora source, tasks >= 1: g's LoRA learns at lr * slow_lr, its head at lr (the reference's first_sl)
    slow_lr: float = at_least(0.0, 0.1)


@dataclass
class HiDeLoRAConfig(MethodConfig):
    """Task-identity inference, a LoRA slot per task (within-task prediction) and task-adaptive prediction."""

    _target_: str = "norga.methods.hide_lora.HiDeLoRA"
    name: str = "hide_lora"
    rank: int = positive(5)
    # the blocks whose attention k and v get the LoRA (the WTP slots and the TII LoRA g)
    lora_layers: list[int] = layers(0, 1, 2, 3, 4)
    # after task t > 0: slot_t <- (1 - m) slot_t + m mean(slot_0 .. slot_{t-1}), down and up apart
    lora_momentum: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    reg: float = at_least(0.0, 0.001)
    contrastive_temperature: float = positive(0.8)
    statistics: str = choice("multi_centroid", "covariance", "variance", "multi_centroid")
    n_centroids: int = positive(10)
    # lora: a task-shared LoRA + linear head (the official HiDe-PET); mlp: HiDe-Prompt's frozen-ViT + MLP (the
    # earlier official HiDe-LoRA in the HiDe-Prompt repository)
    tii_source: str = choice("lora", "lora", "mlp")
    # the reference scores the WTP head over all classes, unseen ones included; true: only the seen classes
    mask_unseen_at_test: bool = False
    tii: HiDeLoRATIIConfig = field(default_factory=HiDeLoRATIIConfig)
    tap: TAPConfig = field(default_factory=TAPConfig)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)  # no gate: there are no prefix prompts for NoRGa's gate to act on


SCHEMAS = {"hide_lora": HiDeLoRAConfig}
