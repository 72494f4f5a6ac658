"""NoRGa: HiDe-Prompt's learner with a non-linear residual gate on the prefix attention logits."""

from __future__ import annotations

from norga.methods.hide_prompt import HiDePrompt
from norga.models.gates import gate_names


class NoRGa(HiDePrompt):
    """Prefix logits ``s + alpha * gate(tau * s)``; alpha, tau learned in the first task, then frozen."""

    name = "norga"
    takes_gate = True

    def gate_name(self) -> str:
        gate = self.cfg.method.gate
        if gate is None:
            raise ValueError(f"method=norga needs a gate ({', '.join(gate_names())}): e.g. gate=tanh; "
                             "for prefix tuning without a gate use method=hide")
        return gate
