"""Stages: what a learner declares a task is made of, and the context through which a stage seeds its
randomness, resumes, reports its epochs and writes the files it owns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from norga.engine.seeding import seed_stage


@dataclass(frozen=True)
class Stage:
    """One step of a task. A learner stage (``evaluate=None``) is run by the learner; an evaluation stage is
    run by the engine and records a row of an accuracy matrix: ``evaluate=""`` the task's evaluation
    (``acc_matrix``; every task ends with one), ``evaluate="<tag>"`` an extra one (``acc_matrix_<tag>``, e.g.
    an evaluation before a learner's last stage of the task)."""

    name: str
    evaluate: str | None = None

    @property
    def is_evaluation(self) -> bool:
        return self.evaluate is not None


def evaluation(name: str = "evaluate", tag: str = "") -> Stage:
    """An evaluation stage (``tag`` "" is the task's own evaluation)."""
    return Stage(name, evaluate=tag)


def check_stages(stages: list[Stage], task: int) -> None:
    """A task's stages have unique names and end with exactly one untagged evaluation."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"task {task}: stage names must be unique, got {names}")
    main = [s for s in stages if s.evaluate == ""]
    if len(main) != 1 or stages[-1] is not main[0]:
        raise ValueError(f"task {task}: the stages must end with the task's evaluation (Stage(..., evaluate='')) "
                         f"and have only that one, got {stages}")


@dataclass
class StageContext:
    """Handed to a learner stage by the engine: where it is (task, stage), the epoch to start at, optimiser/
    scheduler state to restore when resuming inside the stage, and the engine's services (seeding, the end-of-
    epoch callback that logs and checkpoints, writing the learner's own files)."""

    task: int
    stage: str
    seed: int = 0
    start_epoch: int = 0
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    progress: bool = True
    #: ``train.max_epochs`` / ``train.max_batches``: the epoch loop (:func:`norga.engine.loops.run_epochs`)
    #: caps every stage with them, so no learner can forget to
    max_epochs: int | None = None
    max_batches: int | None = None
    on_epoch_end: Callable[[StageContext, int, dict[str, Any]], None] | None = None
    on_artifact: Callable[[str, Any], None] | None = None
    # set by the stage so the engine can checkpoint them
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    scheduler: Any = field(default=None, repr=False)

    @property
    def point(self) -> str:
        """This stage's name in crash drills and messages: ``task<t>/<stage>``."""
        return f"task{self.task}/{self.stage}"

    def epochs(self, configured: int) -> int:
        """A stage's epoch count, ``configured`` capped by ``train.max_epochs``."""
        return int(configured) if self.max_epochs is None else min(int(configured), int(self.max_epochs))

    def seed_epoch(self, epoch: int = 0, stage: str | None = None) -> torch.Generator:
        """Seed every RNG for ``epoch`` of this stage (or of ``stage`` of the same task); returns a generator
        for data-loader shuffling. Call it at the start of each epoch: randomness then never depends on what
        ran before, so a resumed run draws the same numbers."""
        return seed_stage(self.seed, self.task, stage or self.stage, epoch)

    def attach(self, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """Register the stage's optimiser (and scheduler) and restore their state when resuming."""
        self.optimizer, self.scheduler = optimizer, scheduler
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        if scheduler is not None and self.scheduler_state is not None:
            scheduler.load_state_dict(self.scheduler_state)

    def epoch_end(self, epoch: int, metrics: dict[str, Any] | None = None) -> None:
        """Report a finished epoch: the engine logs ``metrics`` and checkpoints (the next epoch resumes)."""
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, epoch, metrics or {})

    def save_artifact(self, name: str, state: Any) -> None:
        """Write ``checkpoints/<name>.pt`` (atomically, once, on the main process) and hand it back to
        ``Learner.load_artifact`` when the run resumes. For large state that never changes once computed, such
        as a task's class statistics, which would be wasteful to rewrite in every checkpoint."""
        if self.on_artifact is not None:
            self.on_artifact(name, state)
