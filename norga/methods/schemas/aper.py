"""Schema of APER (ADAM) with adapters. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from norga.methods.schemas.ease import AdapterTuningConfig


@dataclass
class APERConfig(AdapterTuningConfig):
    """APER / ADAM with adapters (docs/algorithm.md#aper); defaults = RCIL's
    exps/aper_adapter/cifar224_5_5_vit-b_adapter.json."""

    _target_: str = "norga.methods.aper.APER"
    name: str = "aper"


SCHEMAS = {"aper": APERConfig}
