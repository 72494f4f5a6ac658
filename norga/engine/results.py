"""What a run has measured: the accuracy matrix of every evaluation a learner's stages ask for, task-identification
accuracy, and how they become ``metrics.json``, the task's log line and the logger's values.

An evaluation stage carries a tag (:class:`norga.engine.stages.Stage`): ``""`` is the task's own evaluation
(``acc_matrix``), any other tag an extra one (``acc_matrix_<tag>`` and the summary keys ``<key>_<tag>``).
"""

from __future__ import annotations

from typing import Any

from norga.engine.evaluate import EvalResult
from norga.metrics import summarize


class RunResults:
    """Accuracy matrices per evaluation tag, the task-identification matrix and per-sample extras (filled when
    a learner picks one selection per test batch), with their checkpoint state."""

    def __init__(self, batchwise_prompt: bool) -> None:
        self.batchwise_prompt = batchwise_prompt
        # evaluation tag ("" for the task's own evaluation) -> accuracy matrix; task-identification accuracy
        self.matrices: dict[str, list[list[float]]] = {}
        self.tii_acc: list[list[float | None]] = []
        self.extra: list[dict] = []

    @property
    def acc(self) -> list[list[float]]:
        """The task's own evaluations: row i holds tasks 0..i, in percent."""
        return self.matrices.get("", [])

    @property
    def tags(self) -> list[str]:
        """The tags of the extra evaluations recorded so far, in the order they first ran."""
        return [tag for tag in self.matrices if tag]

    def add(self, tag: str, result: EvalResult) -> None:
        """Record the evaluation ``result`` of the stage tagged ``tag`` as the next row of its matrix."""
        self.matrices.setdefault(tag, []).append(result.accs)
        if tag:
            return
        self.tii_acc.append(result.tii_accs)
        extra = {}
        if self.batchwise_prompt:
            extra = {"acc": [s.acc_per_sample_prompt for s in result.tasks],
                     "tii_acc": [s.tii_acc_per_sample_prompt for s in result.tasks]}
        self.extra.append(extra)

    def state_dict(self) -> dict:
        return {"matrices": self.matrices, "tii_acc": self.tii_acc, "extra": self.extra}

    def load_state_dict(self, state: dict) -> None:
        self.matrices, self.tii_acc, self.extra = state["matrices"], state["tii_acc"], state["extra"]

    def metrics(self) -> dict[str, Any]:
        """The measured part of ``metrics.json``: the matrices, then (once a task is done) FA/CA/FFM, task
        identification and each tagged evaluation's FA/CA/FFM, then the per-sample results."""
        out: dict[str, Any] = {
            "tasks_done": len(self.acc),
            "acc_matrix": self.acc,
            **{f"acc_matrix_{tag}": rows for tag, rows in self.matrices.items() if tag},
            "tii_acc_matrix": self.tii_acc,
        }
        if self.acc:
            out.update(summarize(self.acc))
            last = self.tii_acc[-1]
            out["tii_acc"] = None if None in last else sum(last) / len(last)
            for tag, rows in self.matrices.items():
                if tag and len(rows) == len(self.acc):
                    out.update({f"{k}_{tag}": v for k, v in summarize(rows).items()})
        if self.batchwise_prompt and self.extra:
            out["per_sample_prompt"] = self.extra[-1]
        return out

    def summary_keys(self) -> tuple[str, ...]:
        """The ``metrics.json`` keys a logger's run summary shows: the task's results and every tagged
        evaluation's final average accuracy."""
        return ("final_avg_acc", "cum_avg_acc", "forgetting", "tii_acc",
                *(f"final_avg_acc_{tag}" for tag in self.tags), "vit_passes", "wall_time_s")

    def task_line(self, task: int, num_tasks: int, tii_acc: float | None, wall_time: float) -> str:
        """The log line of a finished task: its row, the average, each tagged evaluation's average."""
        row = self.acc[-1]
        n = len(row)
        others = " ".join(f"({tag} {sum(rows[-1]) / n:.2f})" for tag, rows in self.matrices.items() if tag)
        tii = "" if tii_acc is None else f" | task id {tii_acc:.2f}"
        return (f"task {task + 1}/{num_tasks}: acc [{' '.join(f'{a:.1f}' for a in row)}] | avg {sum(row) / n:.2f} "
                f"{others}{tii} | {wall_time:.0f}s")

    def task_values(self, task: int, metrics: dict) -> dict[str, Any]:
        """The logger's values for a finished task."""
        row = self.acc[-1]
        n = len(row)
        values = {"task": task, "eval/avg_acc": metrics["final_avg_acc"],
                  **{f"eval/avg_acc_{tag}": sum(rows[-1]) / n for tag, rows in self.matrices.items() if tag},
                  **{f"eval/acc_task_{j}": a for j, a in enumerate(row)}}
        if metrics["tii_acc"] is not None:
            values["eval/tii_acc"] = metrics["tii_acc"]
        return values
