"""Schema of EASE, and the adapter-training keys it shares with APER. Torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from norga.methods.schemas import MethodConfig, at_least, choice, positive


@dataclass
class AdapterTuningConfig(MethodConfig):
    """An AdaptFormer adapter set trained with a cosine head (learnable sigma) on a task's classes, for
    ``train.epochs`` epochs."""

    bottleneck: int = positive(64)  # the authors' ffn_num: the adapter's bottleneck r
    adapter_dropout: float = field(default=0.1, metadata={"min": 0.0, "max_exclusive": 1.0})
    adapter_scale: float = positive(0.1)
    lr: float = positive(0.01)  # not scaled by the batch size (the authors' value at their batch)
    optimizer: str = choice("sgd", "sgd", "adam", "adamw")
    momentum: float = at_least(0.0, 0.9)
    weight_decay: float = at_least(0.0, 5e-4)
    min_lr: float = at_least(0.0, 0.0)  # the cosine annealing's floor (per epoch)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)


@dataclass
class EASEConfig(AdapterTuningConfig):
    """EASE (docs/algorithm.md#ease); defaults = the authors' CIFAR-100 JSON (PILOT's exps/ease.json)."""

    _target_: str = "norga.methods.ease.EASE"
    name: str = "ease"
    lr: float = positive(0.025)
    alpha: float = at_least(0.0, 0.1)  # weight of the other adapters' subspaces (divided by T)
    beta: float = at_least(0.0, 0.0)   # weight of the PTM subspace
    use_init_ptm: bool = False         # add the frozen PTM as a subspace
    use_reweight: bool = True          # False: one cosine over the whole concatenation
    recalc_sim: bool = True            # complement the whole upper triangle every task (False: newest block only)
    # E2: temperature of the complement's softmax over cosines (the authors': none, i.e. 1)
    complement_tau: float = positive(1.0)
    # E1: the authors' OmniBenchmark mode (APER: PTM + adapter 0 prototypes, plain cosine, alpha = beta = 1,
    # adapters trained in the first adapter_num tasks only)
    moni_adam: bool = False
    adapter_num: int = positive(1)


SCHEMAS = {"ease": EASEConfig}
