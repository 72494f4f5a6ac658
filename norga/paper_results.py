"""Published numbers of the NoRGa paper (``assets/paper_results.csv``) keyed by this project's config names.

Table 1 covers L2P, DualPrompt, S-Prompt, CODA-Prompt, HiDe-Prompt and NoRGa; the gate ablation covers
HiDe-Prompt and NoRGa's gates. The CSV keeps the paper's names (CIFAR-100, Sup-21K, NoRGa, ...); the maps
below translate the choices of the ``dataset``, ``backbone`` and ``method`` config groups onto them. All
numbers are for 10 tasks.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources

PAPER_NUM_TASKS = 10
"""Every published number is for a 10-task split; comparing another split is meaningless."""

DATASETS = {"cifar100": "CIFAR-100", "imr": "ImageNet-R", "cub": "CUB-200"}
BACKBONES = {"sup21k": "Sup-21K", "ibot21k": "iBOT-21K", "ibot": "iBOT-1K"}
# In the order of the paper's Table 1 (the report prints its rows in this order).
METHODS = {
    "l2p": "L2P",
    "dualprompt": "DualPrompt",
    "sprompt": "S-Prompt",
    "coda": "CODA-Prompt",
    "hide": "HiDe-Prompt",
    "norga": "NoRGa",
}
GATED_METHODS = frozenset({"norga"})
"""Methods whose published Table 1 numbers come with a gate; every other method's are for no gate."""


@dataclass(frozen=True)
class Published:
    """A published mean, with its std when the source gives one (percent)."""

    mean: float
    std: float | None = None

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


# (table, dataset, backbone, method, gate, metric) in the paper's names; gate "" outside the ablation.
_Key = tuple[str, str, str, str, str, str]


@functools.cache
def _table() -> dict[_Key, Published]:
    text = resources.files("norga").joinpath("assets/paper_results.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    table: dict[_Key, Published] = {}
    for row in csv.DictReader(lines):
        key = (row["table"], row["dataset"], row["backbone"], row["method"], row["gate"], row["metric"])
        table[key] = Published(float(row["mean"]), float(row["std"]) if row["std"] else None)
    return table


def _paper_names(dataset: str, backbone: str, method: str) -> tuple[str, str, str] | None:
    try:
        return DATASETS[dataset], BACKBONES[backbone], METHODS[method]
    except KeyError:
        return None


def main_table(dataset: str, backbone: str, method: str, metric: str, gate: str | None = None) -> Published | None:
    """Table 1's ``metric`` ("FA", "CA" or "FFM") for a config row; None when not published.

    Table 1 does not name NoRGa's gate, so any gate matches it; a gate on any other method is not the
    published setting and matches nothing.
    """
    names = _paper_names(dataset, backbone, method)
    if names is None or (gate is not None and method not in GATED_METHODS):
        return None
    return _table().get(("table1", *names, "", metric))


def gate_ablation(dataset: str, backbone: str, method: str, gate: str | None) -> Published | None:
    """The gate-ablation FA: NoRGa with ``gate`` (tanh / sigmoid / gelu), or HiDe-Prompt (no gate)."""
    names = _paper_names(dataset, backbone, method)
    if names is None:
        return None
    gate_name = "none" if method == "hide" else (gate or "").lower()
    return _table().get(("gate_ablation", *names, gate_name, "FA"))


# ---- the PTM class-incremental benchmarks (LAMDA-PILOT's protocol; assets/benchmark_results.csv) ----------------
BENCHMARK_METRICS = ("acc_avg_pooled", "acc_last_pooled", "acc_last_taskmean")
"""The metrics published rows carry, in the vocabulary of metrics.json (norga.metrics.pooled)."""

_BenchKey = tuple[str, str, str, str, str, str]  # dataset, split, protocol, backbone, method, metric


@functools.cache
def _benchmark_table() -> dict[_BenchKey, tuple[Published, str]]:
    text = resources.files("norga").joinpath("assets/benchmark_results.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    table: dict[_BenchKey, tuple[Published, str]] = {}
    for row in csv.DictReader(lines):
        key = (row["dataset"], row["split"], row["protocol"], row["backbone"], row["method"], row["metric"])
        table[key] = (Published(float(row["value"])), row["source"])
    return table


def benchmark_row(dataset: str, split: str, protocol: str, backbone: str, method: str
                  ) -> dict[str, tuple[Published, str]]:
    """The published numbers of a row whose every label matches (dataset, ``B{init}Inc{inc}`` split, protocol,
    backbone tag, method): ``{metric: (number, source)}``; empty when none is published for those labels."""
    table = _benchmark_table()
    return {m: table[k] for m in BENCHMARK_METRICS
            if (k := (dataset, split, protocol, backbone, method, m)) in table}

