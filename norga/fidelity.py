"""Fidelity: whether a run corrects the reference implementations' defects (``corrected``, the default) or
reproduces every documented reference behaviour of its method (``reference``; docs/algorithm.md#fidelity).

``fidelity=reference`` is a config group (``conf/fidelity``) whose files set ordinary keys (precision, prefix
layout, schedule, class order, transforms, MoCo v3's final norm), chosen per method and backbone through the
primary config's defaults list, so ``python run.py --cfg job fidelity=reference`` shows every value it set and
any of them can still be overridden. This module names the two fidelities and reads them back from a
config or a ``metrics.json``; runs written before the switch existed are ``corrected``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CORRECTED = "corrected"
REFERENCE = "reference"
FIDELITIES = (CORRECTED, REFERENCE)


def fidelity_of_config(cfg: Any) -> str:
    """The fidelity a composed config asks for (``corrected`` when the key is absent)."""
    value = cfg.get("fidelity") if cfg is not None else None
    return str(value) if value else CORRECTED


def fidelity_of_record(record: Mapping[str, Any]) -> str:
    """The fidelity of a run from its ``metrics.json`` (or ``.hydra/config.yaml``) contents; a record from
    before the switch existed ran today's defaults, i.e. ``corrected``."""
    value = record.get("fidelity")
    return value if value in FIDELITIES else CORRECTED


def fidelity_tag(fidelity: str) -> str:
    """What a table row adds to its method's name: nothing for the default, else the fidelity."""
    return "" if fidelity == CORRECTED else fidelity
