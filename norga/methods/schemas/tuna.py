"""Config schema of TUNA (``method=tuna``; docs/algorithm.md#tuna). Torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from norga.methods.schemas import MethodConfig, at_least, choice, positive
from norga.methods.schemas.mos import AlignmentConfig

#: which adapter the universal branch of the prediction uses (defect T1)
UNIVERSAL = ("official_cur_adapter", "emr_merged")
#: how the class means are scaled before sampling in the alignment when ``decay`` is on (defect T2)
DECAY_RULES = ("reference", "intended")


@dataclass
class TUNAAlignmentConfig(AlignmentConfig):
    """MOS's classifier alignment (crct_epochs, ca_lr), here on every head, with the cosine's period."""

    # T_max of the cosine in epochs: 5 as the reference (defect T3: the lr restarts when epochs > 5);
    # null: the alignment's epochs (one half-cosine, corrected)
    cosine_period: int | None = positive(5)


@dataclass
class TUNAConfig(MethodConfig):
    """One running AdaptFormer adapter set snapshotted after every task, an EMR-merged universal adapter,
    cosine heads trained with CosFace, classifier alignment on sampled Gaussian features, and an
    entropy-selected task adapter ensembled with the universal one at test (docs/algorithm.md#tuna).
    Training epochs: ``train.epochs``; the lrs are not scaled by the batch size."""

    _target_: str = "norga.methods.tuna.TUNA"
    name: str = "tuna"
    bottleneck: int = positive(16)  # hard-coded 16 upstream (the JSON's r is unused)
    adapter_dropout: float = field(default=0.1, metadata={"min": 0.0, "max_exclusive": 1.0})
    adapter_scale: float = positive(0.1)
    lr: float = positive(0.01)  # init_lr: adapter and every head, SGD momentum 0.9
    momentum: float = at_least(0.0, 0.9)
    weight_decay: float = at_least(0.0, 5e-4)
    scale: float = positive(20.0)  # s: cosine logits times s (training, alignment, prediction)
    margin: float = at_least(0.0, 0.0)  # m of CosFace
    use_orth: bool = False  # the up-projection orthogonality term (tuna_cifar.json: false; its log ran true)
    reg: float = at_least(0.0, 0.001)
    # reference (true): the orthogonality term's gradient (and so weight decay and momentum) also reaches the
    # stored snapshots' up-projections, which thus keep changing in later tasks; false: snapshots are frozen
    orth_trains_snapshots: bool = True
    statistics: str = choice("covariance", "covariance", "variance")
    alignment: TUNAAlignmentConfig = field(default_factory=TUNAAlignmentConfig)
    decay: bool = False  # scale the class means before sampling (on for IN-A, IN-R, ObjectNet)
    decay_rule: str = choice("reference", *DECAY_RULES)
    universal: str = choice("official_cur_adapter", *UNIVERSAL)

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)


SCHEMAS = {"tuna": TUNAConfig}
