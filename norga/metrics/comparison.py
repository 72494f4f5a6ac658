"""The figure a paper needs: every method of one dataset and protocol side by side.

One PNG per (dataset, backbone, number of tasks): on top, every method's average-accuracy curve over the tasks
on one axes (mean line and a mean +- std band over seeds), with the joint-training bound of that dataset and
backbone as a dashed horizontal line; below, one accuracy-matrix heatmap per method (mean over seeds), all on
one colour scale with one colour bar. Tasks are numbered from 1, as in the report and the logs.

It reads the report's groups by duck typing (``group.key`` with ``dataset``, ``backbone``, ``num_tasks``,
``bound``, ``method_label``, ``variant``, ``gate``; ``group.runs`` with ``acc_matrix``), so it does not
depend on how the report is laid out. Headless: matplotlib's object API on an Agg canvas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from norga.metrics.accuracy import average_accuracy_curve

_COLUMNS = 4  # heatmaps per row of the grid


def protocols(groups: Iterable[Any]) -> dict[tuple[str, str, int], list[Any]]:
    """The continual groups by (dataset, backbone, number of tasks), in the order given (the paper's)."""
    out: dict[tuple[str, str, int], list[Any]] = {}
    for group in groups:
        if not group.key.bound and group.runs:
            out.setdefault((group.key.dataset, group.key.backbone, group.key.num_tasks), []).append(group)
    return out


def joint_bound(dataset: str, backbone: str, groups: Iterable[Any]) -> tuple[float, str] | None:
    """The best joint-training bound of ``dataset``/``backbone``: (mean final accuracy over seeds, its label),
    or None when there is no joint run."""
    best = None
    for group in groups:
        key = group.key
        if key.bound != "joint" or (key.dataset, key.backbone) != (dataset, backbone) or not group.runs:
            continue
        fa = float(np.mean([average_accuracy_curve(r.acc_matrix)[-1] for r in group.runs]))
        if best is None or fa > best[0]:
            best = (fa, key.method_label)
    return best


def line_label(group: Any) -> str:
    """A method's name in the legend: its label, the gate where it has one, the overrides where any."""
    key = group.key
    gate = f" {key.gate}" if key.gate not in ("", "-", "none", None) else ""
    variant = f" [{key.variant}]" if key.variant else ""
    return f"{key.method_label}{gate}{variant} ({len(group.runs)} seed{'s' if len(group.runs) != 1 else ''})"


def mean_matrix(group: Any, num_tasks: int) -> np.ndarray:
    """The mean accuracy matrix over the group's seeds as a square array, NaN above the diagonal."""
    square = np.full((len(group.runs), num_tasks, num_tasks), np.nan)
    for n, run in enumerate(group.runs):
        for i, row in enumerate(run.acc_matrix[:num_tasks]):
            square[n, i, : i + 1] = row[: i + 1]
    return square.mean(axis=0)


def comparison_figure(groups: Sequence[Any], bound: tuple[float, str] | None, title: str):
    """The comparison figure of ``groups`` (one protocol's continual groups), ``bound`` the joint line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_tasks = min(len(r.acc_matrix) for g in groups for r in g.runs)
    tasks = np.arange(1, num_tasks + 1)
    columns = min(len(groups), _COLUMNS)
    grid_rows = math.ceil(len(groups) / columns)
    cell = max(2.2, 0.35 * num_tasks + 1.0)
    fig = Figure(figsize=(max(7.0, cell * columns + 1.2), 4.2 + cell * grid_rows), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, cell * grid_rows])
    fig.suptitle(title, fontsize=10)

    ax = top.subplots()
    low = 100.0
    for group in groups:
        curves = np.array([average_accuracy_curve(r.acc_matrix)[:num_tasks] for r in group.runs])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        (line,) = ax.plot(tasks, mean, marker="o", markersize=3, label=line_label(group))
        ax.fill_between(tasks, mean - std, mean + std, alpha=0.2, color=line.get_color())
        low = min(low, float((mean - std).min()))
    if bound is not None:
        ax.axhline(bound[0], color="black", linestyle="--", linewidth=1,
                   label=f"joint bound: {bound[1]} ({bound[0]:.1f})")
        low = min(low, bound[0])
    ax.set(xlabel="tasks learned", ylabel="average accuracy (%)", xticks=tasks,
           ylim=(max(0.0, math.floor(low / 5) * 5 - 5), 100.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=2 if len(groups) > 4 else 1)

    matrices = [mean_matrix(g, num_tasks) for g in groups]
    vmin = float(min(np.nanmin(m) for m in matrices))
    vmax = float(max(np.nanmax(m) for m in matrices))
    axes = np.atleast_1d(bottom.subplots(grid_rows, columns, squeeze=False).ravel())
    labels = [str(t) for t in tasks]
    image = None
    for i, ax in enumerate(axes):
        if i >= len(groups):
            ax.set_axis_off()
            continue
        image = ax.imshow(np.ma.masked_invalid(matrices[i]), cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(groups[i].key.method_label, fontsize=8)
        step = max(1, num_tasks // 10)
        ax.set_xticks(range(0, num_tasks, step), labels[::step], fontsize=6)
        ax.set_yticks(range(0, num_tasks, step), labels[::step], fontsize=6)
        if i % columns == 0:
            ax.set_ylabel("after task", fontsize=7)
        ax.set_xlabel("evaluated task", fontsize=7)
    bottom.colorbar(image, ax=list(axes[: len(groups)]), label="accuracy (%)", shrink=0.9)
    return fig


def write_comparisons(groups: Sequence[Any], outdir: Path) -> list[Path]:
    """One comparison PNG per (dataset, backbone, number of tasks) in ``outdir``; returns their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (dataset, backbone, num_tasks), members in protocols(groups).items():
        bound = joint_bound(dataset, backbone, groups)
        seeds = sorted({len(g.runs) for g in members})
        title = (f"{dataset} / {backbone}, {num_tasks} tasks: mean and ± std over seeds "
                 f"({'/'.join(map(str, seeds))} per method)")
        fig = comparison_figure(members, bound, title)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"compare_{dataset}_{backbone}_T{num_tasks}")
        path = outdir / f"{stem}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths
