"""The four accuracies of the field, from the accuracy matrix and the test images per task.

``acc_last_pooled`` / ``acc_avg_pooled``: top-1 over the pooled test images of all seen tasks after the last
task / averaged over all stages (LAMDA-PILOT, EASE, MOS: A_B and Ā; InfLoRA, SD-LoRA: Acc and AAA).
``acc_last_taskmean`` / ``acc_avg_taskmean``: the unweighted mean over seen tasks (HiDe-Prompt, NoRGa: FA and
CA; CODA-Prompt's A_N; RanPAC's final average accuracy). They agree only when every task has as many test
images. Each entry of the matrix is a per-task top-1 over all seen classes, so weighting it by the task's
test count gives exactly the pooled top-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from norga.metrics.accuracy import AccMatrix, _rows

FOUR = ("acc_last_pooled", "acc_avg_pooled", "acc_last_taskmean", "acc_avg_taskmean")


def pooled_curve(acc: AccMatrix, counts: Sequence[int]) -> list[float]:
    """Pooled top-1 after each task: row i weighted by the test counts of tasks 0..i."""
    rows = _rows(acc)
    if len(counts) < len(rows):
        raise ValueError(f"{len(counts)} test counts for {len(rows)} tasks")
    curve = []
    for i, row in enumerate(rows):
        n = np.asarray(counts[: i + 1], dtype=np.float64)
        if n.sum() <= 0:
            raise ValueError(f"tasks 0..{i} have no test images")
        curve.append(float((row * n).sum() / n.sum()))
    return curve


def four_accuracies(acc: AccMatrix, counts: Sequence[int]) -> dict[str, float]:
    """``acc_last_pooled``, ``acc_avg_pooled``, ``acc_last_taskmean``, ``acc_avg_taskmean`` (percent)."""
    pooled = pooled_curve(acc, counts)
    taskmean = [float(row.mean()) for row in _rows(acc)]
    return {
        "acc_last_pooled": pooled[-1],
        "acc_avg_pooled": float(np.mean(pooled)),
        "acc_last_taskmean": taskmean[-1],
        "acc_avg_taskmean": float(np.mean(taskmean)),
    }
