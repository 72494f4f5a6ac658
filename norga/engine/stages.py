"""The stages of a task, and the context through which a stage resumes and reports its epochs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# The order in which the engine runs a task. Stages with epochs checkpoint after every epoch; every stage
# checkpoints when it ends.
STAGES = ("tii_train", "tii_stats", "tii_tap", "wtp_train", "wtp_stats", "evaluate_pre_tap", "wtp_tap", "evaluate")


@dataclass
class StageContext:
    """Handed to a stage by the engine: the epoch to start at, optimiser/scheduler state to restore (when
    resuming inside the stage), and a callback at the end of every epoch (logging and checkpoints)."""

    task: int
    stage: str
    start_epoch: int = 0
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    on_epoch_end: Callable[[StageContext, int, dict[str, Any]], None] | None = None
    # set by the stage so the engine can checkpoint them
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    scheduler: Any = field(default=None, repr=False)

    @property
    def point(self) -> str:
        return f"task{self.task}/{self.stage}"

    def attach(self, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """Register the stage's optimiser (and scheduler) and restore their state when resuming."""
        self.optimizer, self.scheduler = optimizer, scheduler
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        if scheduler is not None and self.scheduler_state is not None:
            scheduler.load_state_dict(self.scheduler_state)

    def epoch_end(self, epoch: int, metrics: dict[str, Any] | None = None) -> None:
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, epoch, metrics or {})
