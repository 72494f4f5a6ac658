"""Options every method's schema has that a learner may not take: the engine refuses them from what the learner
declares (``Learner.takes_gate``, ``Learner.takes_batchwise_prompt``), before the learner is built, so no learner
has to remember to."""

from __future__ import annotations

from omegaconf import DictConfig

from norga.errors import ConfigError

#: option of ``method.*`` -> the learner's class attribute that says it takes it
OPTIONS = {"gate": "takes_gate", "batchwise_prompt": "takes_batchwise_prompt"}


def refuse_untaken_options(learner: type, method: DictConfig) -> None:
    """Raise :class:`ConfigError` when ``method`` sets an option (not None, not false) that the learner class
    does not declare it takes; the message is the learner's ``instead(option, value)``."""
    problems = []
    for option, flag in OPTIONS.items():
        value = method.get(option)
        if value is not None and value is not False and not getattr(learner, flag, False):
            instead = learner.instead(option, value) if hasattr(learner, "instead") else f"drop method.{option}"
            problems.append(f"method={method.name} takes no {option} (got method.{option}={value}): {instead}")
    if problems:
        raise ConfigError("; ".join(problems))
