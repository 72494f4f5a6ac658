"""Figures of continual-learning results (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def square(matrix: list[list[float]]) -> np.ndarray:
    """A ragged lower-triangular accuracy matrix as a square array, NaN above the diagonal."""
    n = len(matrix)
    out = np.full((n, n), np.nan)
    for i, row in enumerate(matrix):
        out[i, :len(row)] = row
    return out


def accuracy_matrix_figure(matrix: list[list[float]], title: str = "accuracy matrix"):
    """Heatmap of A[i][j] = accuracy (%) on task j after training task i, annotated."""
    a = square(matrix)
    n = len(a)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n), dpi=100)
    im = ax.imshow(a, vmin=0, vmax=100, cmap="viridis")
    for i in range(n):
        for j in range(i + 1):
            if not np.isnan(a[i, j]):
                ax.text(j, i, f"{a[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if a[i, j] < 60 else "black")
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    ax.set_xticks(range(n), [str(t + 1) for t in range(n)])  # tasks numbered from 1, as everywhere a user reads
    ax.set_yticks(range(n), [str(t + 1) for t in range(n)])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
