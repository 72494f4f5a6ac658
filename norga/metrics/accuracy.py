"""Continual-learning metrics over a ragged accuracy matrix.

``A[i][j]`` is the test accuracy (percent) on task ``j`` after training task ``i``; row ``i`` holds tasks
``0..i`` (longer rows, e.g. a full square matrix, are accepted and cut to ``0..i``). A run that stopped
early simply has fewer rows: every metric is computed over the rows present.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AccMatrix = Sequence[Sequence[float]]


def _rows(acc: AccMatrix) -> list[np.ndarray]:
    """Row ``i`` as a float array of its entries for tasks ``0..i``; rejects empty or short rows."""
    if len(acc) == 0:
        raise ValueError("accuracy matrix has no rows")
    rows = []
    for i, row in enumerate(acc):
        if len(row) < i + 1:
            raise ValueError(f"row {i} of the accuracy matrix has {len(row)} entries, needs {i + 1}")
        rows.append(np.asarray(row[: i + 1], dtype=np.float64))
    return rows


def final_average_accuracy(acc: AccMatrix) -> float:
    """FA: mean accuracy over all tasks seen, after the last task trained."""
    return float(_rows(acc)[-1].mean())


def cumulative_average_accuracy(acc: AccMatrix) -> float:
    """CA: the average accuracy after each task, averaged over tasks."""
    return float(np.mean([row.mean() for row in _rows(acc)]))


def forgetting(acc: AccMatrix) -> float:
    """FFM: mean over old tasks ``j`` of (best accuracy ever on ``j``) - (final accuracy on ``j``).

    The best is taken over rows ``j..T-1``, the last row included, so each term is >= 0 (a task that
    improved at the end counts as no forgetting). 0.0 after a single task.
    """
    rows = _rows(acc)
    last = len(rows) - 1
    if last == 0:
        return 0.0
    drops = [max(rows[i][j] for i in range(j, last + 1)) - rows[last][j] for j in range(last)]
    return float(np.mean(drops))


def summarize(acc: AccMatrix) -> dict[str, float]:
    """``final_avg_acc``, ``cum_avg_acc`` and ``forgetting`` over the rows present."""
    return {
        "final_avg_acc": final_average_accuracy(acc),
        "cum_avg_acc": cumulative_average_accuracy(acc),
        "forgetting": forgetting(acc),
    }


def average_accuracy_curve(acc: AccMatrix) -> list[float]:
    """The average accuracy over tasks seen after each task (the curve whose last point is FA)."""
    return [float(row.mean()) for row in _rows(acc)]
