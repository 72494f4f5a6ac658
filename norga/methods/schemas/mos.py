"""The schema of MOS (``method=mos``, docs/algorithm.md#mos); torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from norga.methods.schemas import MethodConfig, at_least, choice, positive


@dataclass
class AlignmentConfig:
    """Classifier alignment of the head on features sampled from the seen classes' Gaussians (tasks > 0)."""

    epochs: int = at_least(0, 30)  # crct_epochs; cosine annealing over them
    lr: float = positive(0.005)  # ca_lr, not scaled by the batch size
    momentum: float = at_least(0.0, 0.9)
    # samples per class per epoch = factor x train.batch_size, also the step's batch; steps = seen classes
    samples_per_class_factor: int = positive(5)


@dataclass
class MOSConfig(MethodConfig):
    """One running adapter set merged with its snapshots, Gaussian classifier alignment, self-refined retrieval
    (docs/algorithm.md#mos). The defaults are the authors' code; the switches' corrected values are
    ``merge_mode=once_per_step`` and ``eval_inplace_drift=false``."""

    _target_: str = "norga.methods.mos.MOS"
    name: str = "mos"
    bottleneck: int = positive(16)  # ffn_num
    adapter_dropout: float = field(default=0.1, metadata={"min": 0.0, "max_exclusive": 1.0})
    adapter_scale: float = positive(0.1)
    # m of the merge theta <- (1 - m) theta + m S_{T-1} / T (0: no merge)
    adapter_momentum: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    # official_per_block: the authors' code, 12 pulls inside every training forward (block l sees l + 1) and 12
    # per batch of the class statistics, plus one after each optimiser step; once_per_step: only the latter
    merge_mode: str = choice("official_per_block", "official_per_block", "once_per_step")
    # true: the authors' code, 12 pulls on the stored snapshot k >= 1 in every test pass, kept (results depend on
    # the test batch size; evaluated batch by batch); false: snapshots stay frozen, their features are cached
    eval_inplace_drift: bool = True
    lr: float = positive(0.01)  # init_lr of the adapters, not scaled by the batch size
    head_lr_factor: float = positive(0.1)  # the head trains at this times lr
    momentum: float = at_least(0.0, 0.9)
    weight_decay: float = at_least(0.0, 5e-4)  # both groups and the alignment
    min_lr: float = at_least(0.0, 0.0)  # the cosine annealing's floor
    reg: float = at_least(0.0, 0.1)  # weight of the contrastive (orthogonality) term
    contrastive_temperature: float = positive(0.8)
    statistics: str = choice("covariance", "covariance", "variance")  # ca_storage_efficient_method
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    ensemble: bool = True  # softmax(head) + softmax((T+1) prototype cosine)
    max_evaluations: int = positive(4)  # of the head in the self-refined retrieval (MAX_ITER)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)


SCHEMAS = {"mos": MOSConfig}
