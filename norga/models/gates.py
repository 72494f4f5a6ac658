"""Gate activations for NoRGa's non-linear residual gate.

A gate is looked up by name (the value of ``method.gate``); a new gate is one more entry made with
:func:`register_gate` plus a ``conf/gate/<name>.yaml`` file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GateFn = Callable[[torch.Tensor], torch.Tensor]

_GATES: dict[str, GateFn] = {}


def register_gate(name: str) -> Callable[[GateFn], GateFn]:
    """Register ``fn`` as the gate activation called ``name``."""

    def wrap(fn: GateFn) -> GateFn:
        _GATES[name] = fn
        return fn

    return wrap


def get_gate(name: str) -> GateFn:
    """The activation registered as ``name``; a ValueError lists the known names otherwise."""
    try:
        return _GATES[name]
    except KeyError:
        raise ValueError(f"unknown gate {name!r}; known gates: {', '.join(sorted(_GATES))}") from None


def gate_names() -> list[str]:
    return sorted(_GATES)


register_gate("tanh")(torch.tanh)
register_gate("sigmoid")(torch.sigmoid)
register_gate("gelu")(F.gelu)
register_gate("relu")(F.relu)
register_gate("softplus")(F.softplus)
register_gate("elu")(F.elu)
register_gate("linear")(lambda x: x)
