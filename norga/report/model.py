"""What a report is made of: the row a run belongs to (:class:`GroupKey`), finished runs, groups of seeds,
failed and unfinished runs, duplicate seeds; the paper's method order and the metrics shown."""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from norga import paper_results
from norga.fidelity import CORRECTED, fidelity_tag

NA = "n/a"
NO_GATE = "-"

# Rows follow the paper's Table 1, then the methods it does not report; unknown methods come after these.
METHOD_ORDER: tuple[str, ...] = (*paper_results.METHODS, "simplecil", "ranpac", "inflora", "sdlora", "hide_lora",
                                  "aper", "ease", "mos", "tuna")

# (column label, metrics.json key); std over seeds is numpy's default ddof=0, see STD_NOTE.
METRICS: tuple[tuple[str, str], ...] = (
    ("FA", "final_avg_acc"),
    ("CA", "cum_avg_acc"),
    ("FFM", "forgetting"),
    ("TII", "tii_acc"),
)
PAPER_METRICS = ("FA", "CA", "FFM")
STD_NOTE = (
    "mean ± std over the seeds of each row; std is numpy's population std (ddof=0), "
    "so a single seed shows ± 0.00"
)

def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


@dataclass(frozen=True)
class GroupKey:
    """What a table row stands for."""

    dataset: str
    backbone: str
    method: str
    gate: str  # NO_GATE for methods without a gate (all but NoRGa)
    num_tasks: int
    variant: str = ""  # sorted extra task overrides, "" when none
    bound: str = ""  # "" for a continual run, "joint" for the all-classes-at-once upper bound
    fidelity: str = CORRECTED  # norga.fidelity: corrected, or reference (labelled)
    # the protocol's labels (norga.report_protocols): "" for runs recorded before protocols
    protocol: str = ""
    split: str = ""  # <data split>/<B{init}Inc{inc}>/<class order>

    @property
    def method_label(self) -> str:
        tags = ", ".join(t for t in (self.bound, fidelity_tag(self.fidelity)) if t)
        return f"{self.method} ({tags})" if tags else self.method

    @property
    def label(self) -> str:
        text = f"{self.dataset}/{self.backbone}/{self.method_label}/{self.gate} T={self.num_tasks}"
        if self.protocol not in ("", "hide"):
            text += f" {self.protocol} {self.split}"
        return f"{text} [{self.variant}]" if self.variant else text

    def sort_key(self) -> tuple:
        """The paper's order: bounds after continual rows, then by method, then dataset and backbone."""
        return (self.bound != "", self.bound, _method_rank(self.method), self.method, self.fidelity, self.dataset,
                self.backbone, self.gate, self.num_tasks, self.variant, self.protocol, self.split)

    @property
    def file_stem(self) -> str:
        gate = "nogate" if self.gate == NO_GATE else self.gate
        parts = [self.dataset, self.backbone, self.method, gate, *([self.bound] if self.bound else []),
                 *([fidelity_tag(self.fidelity)] if fidelity_tag(self.fidelity) else [])]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts))
        stem = f"{stem}_T{self.num_tasks}"
        if self.variant:  # overrides can be long or hold '/', a hash keeps the name short and unique
            stem += "_v" + hashlib.sha1(self.variant.encode()).hexdigest()[:8]
        if self.protocol not in ("", "hide"):  # rows of two protocols never share a plot file
            stem += f"_{self.protocol}_" + hashlib.sha1(self.split.encode()).hexdigest()[:8]
        return stem


@dataclass(frozen=True)
class Run:
    """A finished run."""

    path: Path
    key: GroupKey
    seed: int | None
    values: dict[str, float | None]  # metrics.json key -> value
    acc_matrix: list[list[float]]
    mtime: float = 0.0  # of metrics.json: which of two runs of one seed is newer


@dataclass(frozen=True)
class _NotAResult:
    path: Path
    label: str
    done: int | None
    total: int | None
    reason: str

    @property
    def progress(self) -> str:
        done = "?" if self.done is None else str(self.done)
        total = "?" if self.total is None else str(self.total)
        return f"{done}/{total} tasks"

    def line(self, markdown: bool = False) -> str:
        return f"{_path(self.path, markdown)} ({self.label}, {self.progress}): {self.reason}"


@dataclass(frozen=True)
class Unfinished(_NotAResult):
    """A run that is not (or not yet) a usable result: still running, killed, or unreadable."""


@dataclass(frozen=True)
class Refused(_NotAResult):
    """A run refused before its first stage ran (nothing trained); the report skips it and counts it."""


@dataclass(frozen=True)
class Failed(_NotAResult):
    """A run that stopped on an error; ``reason`` is the error's first line."""


@dataclass
class Group:
    key: GroupKey
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[str]:
        return sorted((str(r.seed) if r.seed is not None else "?" for r in self.runs), key=_seed_order)

    def reported(self, metric_key: str) -> list[float]:
        """The values of ``metric_key`` over the runs that report it (a null is missing, never a 0)."""
        return [v for r in self.runs if (v := r.values.get(metric_key)) is not None]

    def stat(self, metric_key: str) -> tuple[float, float] | None:
        """(mean, std with ddof=0) over the runs that report ``metric_key``; None if none does."""
        values = self.reported(metric_key)
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values))


@dataclass(frozen=True)
class Duplicate:
    """One seed finished more than once in a group: only ``used`` (the newest) counts."""

    key: GroupKey
    seed: int
    used: Run
    ignored: tuple[Run, ...]

    def line(self, markdown: bool = False) -> str:
        ignored = ", ".join(_path(r.path, markdown) for r in self.ignored)
        return f"{self.key.label} seed {self.seed}: used {_path(self.used.path, markdown)}; ignored {ignored}"


@dataclass
class Report:
    """Everything found under the searched directories, sorted for printing."""

    groups: list[Group]
    duplicates: list[Duplicate]
    failed: list[Failed]
    unfinished: list[Unfinished]
    refused: list[Refused] = field(default_factory=list)


def _path(path: Path, markdown: bool) -> str:
    # code spans keep Markdown from reading the '_' and '*' of run folders as emphasis
    return f"`{path}`" if markdown else str(path)


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (sys.maxsize, seed)
