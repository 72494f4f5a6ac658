"""The schema of ``method=sdlora`` (docs/algorithm.md#sd-lora); torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from norga.methods.schemas import MethodConfig, at_least, choice, positive


def milestones() -> Any:
    return field(default_factory=list, metadata={"min_items": 0, "min": 0})


@dataclass
class SDLoRAConfig(MethodConfig):
    """A LoRA per task on q and v of every block, earlier tasks' directions frozen and normalised, one learned
    magnitude per task shared by all blocks; defaults are the authors' code (SD:models/sdlora.py)."""

    _target_: str = "norga.methods.sdlora.SDLoRALearner"
    name: str = "sdlora"
    rank: int = positive(10)
    # null: rank throughout; rr: SD-LoRA-RR, rank for tasks 0-3, rank - 2 for 4-7, rank - 4 from task 8
    rank_schedule: str | None = choice(None, None, "rr")
    layers: list[int] | None = None  # blocks with LoRA; null: every block
    targets: list[str] = field(default_factory=lambda: ["q", "v"],
                               metadata={"min_items": 1, "choices": ("q", "k", "v", "qkv", "proj", "fc1", "fc2")})
    magnitude_init: float = positive(0.8)
    # false (the authors' code): every magnitude restarts at magnitude_init each task; true: earlier ones kept
    keep_magnitudes: bool = False
    # product_of_norms (the authors' code): B_i A_i / (||B_i|| ||A_i||); norm_of_product: B_i A_i / ||B_i A_i||
    direction_norm: str = choice("product_of_norms", "product_of_norms", "norm_of_product")
    # SGD, lr not scaled by the batch; MultiStepLR per epoch (task 0: init_*, later tasks: the others)
    init_lr: float = positive(0.01)
    lr: float = positive(0.01)
    init_milestones: list[int] = milestones()
    milestones: list[int] = milestones()
    init_gamma: float = positive(0.1)
    gamma: float = positive(0.1)
    momentum: float = at_least(0.0, 0.9)
    weight_decay: float = at_least(0.0, 0.0)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)
        m = cfg.method
        if len(set(m.targets)) != len(m.targets):
            yield "method.targets", f"{list(m.targets)} names a target twice"
        if m.layers is not None and not m.layers:
            yield "method.layers", "is empty: list the blocks that get LoRA, or null for every block"


SCHEMAS = {"sdlora": SDLoRAConfig}
