"""Experiment loggers: W&B (offline by default) or none. The run log itself goes through ``logging``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def to_run_log(message: str, level: int = logging.ERROR, exc: BaseException | None = None) -> None:
    """Write ``message`` (and ``exc``'s traceback) to the run's log files only: the root logger's file
    handlers, i.e. Hydra's ``run.log``. The app shows the same error on the screen once, as a plain
    paragraph, so it goes to no console handler here."""
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.getLogger("norga").makeRecord("norga", level, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def progress_bars(setting: bool | str) -> bool:
    """Whether to draw progress bars (``progress``): ``true``/``false``, or ``auto``, on a terminal only (stderr
    a tty). Without bars the epoch loop writes one log line per epoch instead, and nothing writes a carriage
    return, so a log redirected to a file stays readable."""
    if setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


class NullLogger:
    """Logs nothing (``logger=none``)."""

    run_id: str | None = None

    def start(self, config: dict, run_dir: Path, resume_id: str | None = None) -> None:
        pass

    def log(self, metrics: dict[str, Any]) -> None:
        pass

    def log_matrix(self, name: str, matrix: list[list[float]], task: int) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    """Weights & Biases: config, per-epoch losses and lrs, per-task accuracies on a shared ``task`` axis,
    the accuracy matrix as a table and a heatmap, and the final metrics in the run summary.

    ``mode=offline`` (default) writes under the run directory and never touches the network; sync later
    with ``wandb sync <run_dir>/wandb/offline-run-*``.
    """

    def __init__(self, project: str = "norga", entity: str | None = None, mode: str = "offline",
                 group: str | None = None, tags: list[str] | None = None, name: str | None = None) -> None:
        self.project, self.entity, self.mode = project, entity, mode
        self.group, self.tags, self.name = group, list(tags or []), name
        self.run = None
        self.run_id = None

    def start(self, config: dict, run_dir: Path, resume_id: str | None = None) -> None:
        import wandb

        # quiet: W&B's own run summary would follow the run's last line (done: ...)
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, group=self.group,
                              tags=self.tags, name=self.name, config=config, dir=str(run_dir),
                              id=resume_id, resume="allow" if resume_id else None,
                              settings=wandb.Settings(quiet=True))
        self.run_id = self.run.id
        self._stages: set[str] = set()
        self.run.define_metric("epoch")
        self.run.define_metric("task")
        self.run.define_metric("eval/*", step_metric="task")

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        # a learner's stages report epochs as "<stage>/<value>": each stage's curves on the epoch axis
        for key in metrics:
            stage = key.split("/", 1)[0]
            if "/" in key and stage != "eval" and stage not in self._stages:
                self._stages.add(stage)
                self.run.define_metric(f"{stage}/*", step_metric="epoch")
        self.run.log(metrics)

    def log_matrix(self, name: str, matrix: list[list[float]], task: int) -> None:
        if self.run is None:
            return
        import wandb

        from norga.metrics.plots import accuracy_matrix_figure

        n = len(matrix)
        columns = ["after task"] + [f"task {j}" for j in range(n)]
        rows = [[i] + row + [None] * (n - len(row)) for i, row in enumerate(matrix)]
        fig = accuracy_matrix_figure(matrix, title=name)
        self.run.log({f"eval/{name}_table": wandb.Table(columns=columns, data=rows),
                      f"eval/{name}_heatmap": wandb.Image(fig), "task": task})
        import matplotlib.pyplot as plt

        plt.close(fig)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in metrics.items():
                self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
