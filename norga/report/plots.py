"""Per-group plots: the average-accuracy curve over tasks and the mean accuracy-matrix heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from norga.metrics import average_accuracy_curve
from norga.report.model import Group

# -------------------------------------------------------------------------------------------------- plots


def plot_group(group: Group, outdir: Path) -> list[Path]:
    """Average-accuracy curve (mean ± std band over seeds) and mean accuracy-matrix heatmap as PNGs."""
    # the object-oriented API with an explicit Agg canvas: no pyplot, no global backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    outdir.mkdir(parents=True, exist_ok=True)
    num_tasks = min(len(r.acc_matrix) for r in group.runs)
    seeds_note = f"{len(group.runs)} seed(s)"

    curves = np.array([average_accuracy_curve(r.acc_matrix)[:num_tasks] for r in group.runs])
    mean, std = curves.mean(axis=0), curves.std(axis=0)
    tasks = np.arange(1, num_tasks + 1)
    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(tasks, mean, marker="o")
    ax.fill_between(tasks, mean - std, mean + std, alpha=0.25, label="± std (ddof=0)")
    ax.set(xlabel="tasks learned", ylabel="average accuracy (%)", xticks=tasks,
           title=f"{group.key.label}\n{seeds_note}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    curve_path = outdir / f"{group.key.file_stem}_curve.png"
    fig.savefig(curve_path, dpi=120)

    square = np.full((len(group.runs), num_tasks, num_tasks), np.nan)
    for n, run in enumerate(group.runs):
        for i, row in enumerate(run.acc_matrix[:num_tasks]):
            square[n, i, : i + 1] = row[: i + 1]
    matrix = square.mean(axis=0)  # upper triangle stays NaN: those tasks were not seen yet
    fig = Figure(figsize=(1.0 + 0.6 * num_tasks, 0.6 + 0.55 * num_tasks))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    low, high = float(np.nanmin(matrix)), float(np.nanmax(matrix))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=low, vmax=high)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    middle = (low + high) / 2
    fontsize = max(4, 9 - num_tasks // 4)
    for i in range(num_tasks):
        for j in range(i + 1):
            ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=fontsize,
                    color="black" if matrix[i, j] > middle else "white")
    labels = [str(t) for t in tasks]
    ax.set_xticks(range(num_tasks), labels)
    ax.set_yticks(range(num_tasks), labels)
    ax.set(xlabel="evaluated task", ylabel="after training task",
           title=f"{group.key.label}\nmean of {seeds_note}")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    matrix_path = outdir / f"{group.key.file_stem}_matrix.png"
    fig.savefig(matrix_path, dpi=120)
    return [curve_path, matrix_path]
