"""Schema of ``method=inflora`` (docs/algorithm.md#inflora); torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from norga.methods.schemas import MethodConfig, choice, positive


@dataclass
class InfLoRAConfig(MethodConfig):
    """Per task a LoRA on k and v whose down-projection is designed off the earlier tasks' input subspace
    (DualGPM memory); only the up-projection and the task's head train."""

    _target_: str = "norga.methods.inflora.InfLoRA"
    name: str = "inflora"
    rank: int = positive(10)
    # the LoRA'd blocks; null: every block (InfLoRA). [0, 1, 2, 3, 4]: InfLoRA-b5
    lora_layers: list[int] | None = None
    # memory threshold eps_t = lamb + (lame - lamb) t / T
    lamb: float = field(default=0.95, metadata={"min": 0.0, "max": 1.0})
    lame: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    # energies of the threshold rule: squared eigenvalues of the covariance (the authors') or the eigenvalues
    energy_on: str = choice("squared_eigs", "squared_eigs", "eigs")
    # dualgpm (InfLoRA) or gpm (protected space only: InfLoRA-b5, InfLoRA_domain)
    memory: str = choice("dualgpm", "dualgpm", "gpm")
    # merge finished tasks' branches into the frozen weights (the same outputs to float rounding, less compute)
    merge_old: bool = False
    # the heads' lr (null: optimizer.lr); InfLoRA_domain's fc_lrate
    head_lr: float | None = positive(None)
    # SGD with momentum 0.9 (InfLoRA_domain's optimiser) in place of the optimizer node's (Adam); same lr keys
    sgd: bool = False

    @classmethod
    def check(cls, cfg: Any) -> Iterator[tuple[str, str]]:
        yield from super().check(cfg)
        yield from cls.no_selection(cfg)
        m = cfg.method
        if m.lamb > m.lame:
            yield "method.lamb", (f"{m.lamb} is above method.lame={m.lame}: the memory threshold "
                                  "eps_t = lamb + (lame - lamb) t / T grows from lamb to lame")
        blocks = m.lora_layers
        if blocks is not None:
            if not len(blocks):
                yield "method.lora_layers", "lists no block (null: every block)"
            elif len(set(blocks)) != len(blocks) or min(blocks) < 0:
                yield "method.lora_layers", f"{list(blocks)} must be distinct block indices >= 0"


SCHEMAS = {"inflora": InfLoRAConfig}
