"""A run's checkpoints (``<run dir>/checkpoints``), all written atomically, on rank 0:

* ``last.pt``: the cursor (task, stage, epoch to do next), the learner's modules, the stage's optimiser and
  scheduler state, the run's results, the learner's artifacts so far and counters; rewritten after every
  epoch and stage.
* ``<artifact>.pt``: files a learner writes once with ``ctx.save_artifact`` (large, never changing once
  computed, e.g. class statistics).
* ``task_<t>.pt``: ``last.pt`` as it was when task t finished; kept.

No RNG state is stored: every epoch of every stage seeds itself from (seed, task, stage name, epoch).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from norga.engine.checkpoint import load_checkpoint, save_atomic

Cursor = tuple[int, str, int]  # (task, stage, epoch) to do next


class RunClock:
    """Wall time spent running, summed over the sessions of a resumed run."""

    def __init__(self) -> None:
        self.total = 0.0
        self._since = time.perf_counter()

    def restart(self) -> None:
        """Count from now (time spent before, e.g. building, is not the run's)."""
        self._since = time.perf_counter()

    def tick(self) -> float:
        """Add the time since the last tick; returns the total in seconds."""
        now = time.perf_counter()
        self.total += now - self._since
        self._since = now
        return self.total


class Checkpointer:
    """Writes and reads a run's checkpoints. ``state`` builds what ``last.pt`` holds (the run passes it in, so
    this class knows nothing of learners); only the main process writes; every process tracks the cursor."""

    def __init__(self, ckpt_dir: Path, is_main: bool) -> None:
        self.dir = ckpt_dir
        self.is_main = is_main
        self.artifacts: list[str] = []  # names of the artifacts written so far, in order
        self.saved: Cursor | None = None  # the cursor last.pt holds

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def save(self, state: dict, cursor: Cursor) -> None:
        """Rewrite ``last.pt`` with ``state``, whose cursor is ``cursor``."""
        if self.is_main:
            save_atomic(state, self.last)
        self.saved = cursor

    def save_task(self, state: dict, cursor: Cursor, task: int) -> None:
        """``last.pt`` and the kept ``task_<task>.pt`` after task ``task`` (main process only)."""
        save_atomic(state, self.last)
        save_atomic(state, self.dir / f"task_{task}.pt")
        self.saved = cursor

    def save_artifact(self, name: str, state: Any) -> None:
        """Write ``<name>.pt`` once; ``last.pt`` lists it from now on."""
        if self.is_main:
            save_atomic(state, self.dir / f"{name}.pt")
        if name not in self.artifacts:
            self.artifacts.append(name)

    def load_last(self, state: dict | None) -> dict | None:
        """``last.pt``'s state: ``state`` where the main process read it already, else the file; None when
        there is none."""
        if state is None and not self.is_main and self.last.is_file():
            state = load_checkpoint(self.last)
        return state

    def load_artifacts(self, names: list[str]) -> Iterator[tuple[str, Any]]:
        """``(name, state)`` of each artifact ``last.pt`` lists, in order, read one at a time; remembered as
        written."""
        for name in names:
            yield name, load_checkpoint(self.dir / f"{name}.pt")
        self.artifacts = list(names)

    def describe(self) -> str:
        """Where a resume would continue, for an interrupted run's log."""
        if self.saved is None:
            return f"no checkpoint was written in {self.dir} yet; a resume starts from task 0"
        task, stage, epoch = self.saved
        return (f"{self.last} holds the run up to task {task}, stage {stage}, epoch {epoch}; "
                "a resume continues from there")
