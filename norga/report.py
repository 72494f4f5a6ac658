"""Tables (and plots) over many runs' ``metrics.json``.

    python -m norga.report outputs/ [more dirs...] [--paper] [--strict] [--plot OUTDIR] [--csv FILE]
                           [--format md|csv]

A run directory is any directory below the given ones that holds ``metrics.json`` or a Hydra ``.hydra/``
folder. Finished runs are grouped by (dataset, backbone, method, gate, number of tasks, other task
overrides, bound) and each group becomes one row of mean ± std over its seeds; rows follow the paper's
method order (L2P, DualPrompt, S-Prompt, CODA-Prompt, HiDe-Prompt, NoRGa, then SimpleCIL, RanPAC), joint
upper bounds (``"bound": "joint"``) last, each continual row showing its gap to a joint row. A seed
finished twice in one group counts once (the newest run; ``--strict`` makes it an error). Nothing else is
averaged or dropped silently: runs that stopped on an error are listed under "Failed runs", the rest
(killed, still running, unreadable) under "Unfinished runs".
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from norga import paper_results
from norga.config import RESULT_FREE_KEYS
from norga.fidelity import CORRECTED, fidelity_of_record, fidelity_tag
from norga.metrics import average_accuracy_curve, summarize
from norga.report_protocols import protocol_labels, protocol_section

NA = "n/a"
NO_GATE = "-"

# Rows follow the paper's Table 1, then the methods it does not report; unknown methods come after these.
METHOD_ORDER: tuple[str, ...] = (*paper_results.METHODS, "simplecil", "ranpac")

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

# Task overrides (from .hydra/overrides.yaml) that do not make a run a different experiment: the row's own
# keys and bookkeeping. Anything else (optimizer.lr=..., debug=..., method.prompt_length=...) starts a
# separate group so that different settings are never averaged together.
_ROW_KEYS = frozenset({"seed", "dataset", "backbone", "method", "gate", "method.gate", "sweep", "bound", "fidelity"})
_BOOKKEEPING_ROOTS = frozenset({"logger", "paths", "hydra", "wandb"})


def _result_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in RESULT_FREE_KEYS)


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


def _path(path: Path, markdown: bool) -> str:
    # code spans keep Markdown from reading the '_' and '*' of run folders as emphasis
    return f"`{path}`" if markdown else str(path)


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (sys.maxsize, seed)


# --------------------------------------------------------------------------------------------- discovery


def _is_run_dir(path: Path, filenames: Iterable[str]) -> bool:
    # Hydra makes .hydra/ when a job starts: a run that died before writing anything else still shows up
    return "metrics.json" in filenames or (path / ".hydra").is_dir()


def find_run_dirs(roots: Sequence[Path]) -> list[Path]:
    """Run directories below ``roots`` (a root may itself be one, or be a ``metrics.json`` file)."""
    found: dict[Path, Path] = {}
    for root in roots:
        if root.is_file() and root.name == "metrics.json":
            root = root.parent
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            if _is_run_dir(here, filenames):
                found.setdefault(here.resolve(), here)  # overlapping roots list a run once
                dirnames[:] = []  # a run's subfolders (checkpoints, .hydra, wandb) hold no further runs
            else:
                # hidden folders (.submitit, .git, ...) hold no runs either
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found.values())


# ------------------------------------------------------------------------------------------------ loading


def _load_yaml(path: Path) -> Any:
    """A YAML file as plain containers, interpolations left unresolved; None when absent or broken."""
    from omegaconf import OmegaConf  # omegaconf is only needed for runs that have a .hydra folder

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # any unreadable file just means "unknown" here
        return None


def _variant(overrides: Any) -> str:
    if not isinstance(overrides, list):
        return ""
    kept = []
    for item in overrides:
        key = str(item).split("=", 1)[0].lstrip("~+").split("@", 1)[0]
        if key in _ROW_KEYS or key.split(".", 1)[0] in _BOOKKEEPING_ROOTS or _result_free(key):
            continue
        kept.append(str(item))
    return ",".join(sorted(kept))


def _hydra_info(run_dir: Path) -> dict[str, Any]:
    """Row, seed, number of tasks and extra overrides as recorded by Hydra (empty where unknown)."""
    hydra_dir = run_dir / ".hydra"
    if not hydra_dir.is_dir():
        return {}
    info: dict[str, Any] = {}
    choices: Any = _load_yaml(hydra_dir / "hydra.yaml")
    for node in ("hydra", "runtime", "choices"):  # what Hydra picked in each config group
        choices = choices.get(node) if isinstance(choices, dict) else None
    choices = choices if isinstance(choices, dict) else {}
    for group in ("dataset", "backbone", "method", "gate"):
        if isinstance(choices.get(group), str):
            info[group] = choices[group]
    cfg = _load_yaml(hydra_dir / "config.yaml")
    if isinstance(cfg, dict):
        if isinstance(cfg.get("seed"), int):
            info["seed"] = cfg["seed"]
        nodes = {k: cfg[k] if isinstance(cfg.get(k), dict) else {} for k in ("dataset", "backbone", "method")}
        for group, node in nodes.items():  # where hydra.yaml is missing
            if group not in info and isinstance(node.get("name"), str):
                info[group] = node["name"]
        if isinstance(nodes["dataset"].get("num_tasks"), int):
            info["num_tasks"] = nodes["dataset"]["num_tasks"]
        if "gate" not in info and "gate" in nodes["method"]:  # the gate group is optional (null)
            info["gate"] = nodes["method"]["gate"]
    info["variant"] = _variant(_load_yaml(hydra_dir / "overrides.yaml"))
    return info


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _gate(value: Any) -> str:
    return NO_GATE if _is_null(value) else str(value)


def _bound(value: Any) -> str:
    return "" if _is_null(value) else str(value)


def _is_null(value: Any) -> bool:
    return value is None or str(value).lower() in ("", "none", "null")


def _row_label(info: dict[str, Any]) -> str:
    parts = [str(info.get(k) or "?") for k in ("dataset", "backbone", "method")]
    if _bound(info.get("bound")):
        parts[-1] += f" ({_bound(info['bound'])})"
    gate = _gate(info.get("gate")) if "gate" in info else "?"
    seed = info.get("seed")
    return "/".join([*parts, gate]) + f" seed={'?' if seed is None else seed}"


def _first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else "(empty error message)"


# Hydra's job log: "[time][logger][ERROR] - message"
_LOG_ERROR = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(?:ERROR|CRITICAL)\] - (.*)$")


def log_error(log_file: Path) -> str | None:
    """The first error recorded in a run's log (Hydra's format, or a traceback's exception line)."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for n, line in enumerate(lines):
        if match := _LOG_ERROR.match(line):
            return _first_line(match[1])
        if line.startswith("Traceback (most recent call last)"):
            # the exception is the first line after the indented frames
            return next((rest for rest in lines[n + 1:] if rest and not rest[0].isspace()), line)
    return None


def load_run(run_dir: Path) -> Run | Failed | Unfinished:
    """Read one run directory: a finished result, a run that failed with an error, or anything else
    (running, killed, unreadable) as ``Unfinished``."""
    info = _hydra_info(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        error = log_error(run_dir / "run.log")
        if error is not None:
            return Failed(run_dir, _row_label(info), 0, info.get("num_tasks"), error)
        reason = "no metrics.json (not started properly, or still in or killed in its first task)"
        return Unfinished(run_dir, _row_label(info), 0, info.get("num_tasks"), reason)
    try:
        data = json.loads(metrics_file.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        reason = f"unreadable metrics.json: {err}"
        return Unfinished(run_dir, _row_label(info), None, info.get("num_tasks"), reason)

    # metrics.json is the record of the run; .hydra only fills what it lacks
    for name in ("dataset", "backbone", "method", "seed", "num_tasks"):
        if data.get(name) is not None:
            info[name] = data[name]
    for name in ("gate", "bound"):  # null is meaningful here: no gate, a continual run
        if name in data:
            info[name] = data[name]
    acc = data.get("acc_matrix")
    acc = acc if isinstance(acc, list) else []
    total = info.get("num_tasks") if isinstance(info.get("num_tasks"), int) else None
    label = _row_label(info)

    if data.get("finished") is not True:
        if data.get("error") is not None:
            return Failed(run_dir, label, len(acc), total, _first_line(data["error"]))
        return Unfinished(run_dir, label, len(acc), total, "not finished")
    if total is None or not all(isinstance(info.get(k), str) for k in ("dataset", "backbone", "method")):
        reason = "finished, but dataset/backbone/method/num_tasks missing"
        return Unfinished(run_dir, label, len(acc), total, reason)
    if len(acc) != total:
        reason = f"marked finished, but acc_matrix has {len(acc)} rows for {total} tasks"
        return Unfinished(run_dir, label, len(acc), total, reason)
    try:
        computed = summarize(acc)
    except (TypeError, ValueError) as err:
        return Unfinished(run_dir, label, len(acc), total, f"bad acc_matrix: {err}")

    # the stored metrics are used as written; the matrix only fills values that are absent
    values = {key: _number(data.get(key)) for _, key in METRICS}
    for key, value in computed.items():
        if values[key] is None:
            values[key] = value
    key = GroupKey(info["dataset"], info["backbone"], info["method"], _gate(info.get("gate")), total,
                   info.get("variant", ""), _bound(info.get("bound")), fidelity_of_record(data),
                   *protocol_labels(data))
    seed = info.get("seed") if isinstance(info.get("seed"), int) else None
    matrix = [[float(x) for x in row] for row in acc]
    return Run(run_dir, key, seed, values, matrix, metrics_file.stat().st_mtime)


def drop_duplicate_seeds(runs: Iterable[Run]) -> tuple[list[Run], list[Duplicate]]:
    """Keep the newest run (metrics.json mtime, then path) of each (group, seed); report the others.

    A re-run into a new folder must not be averaged with the run it replaces. Runs without a seed cannot
    be matched and are all kept.
    """
    kept: list[Run] = []
    by_seed: dict[tuple[GroupKey, int], list[Run]] = defaultdict(list)
    for run in runs:
        if run.seed is None:
            kept.append(run)
        else:
            by_seed[run.key, run.seed].append(run)
    duplicates = []
    for (key, seed), same in by_seed.items():
        newest, *older = sorted(same, key=lambda r: (r.mtime, str(r.path)), reverse=True)
        kept.append(newest)
        if older:
            duplicates.append(Duplicate(key, seed, newest, tuple(older)))
    duplicates.sort(key=lambda d: (d.key.sort_key(), d.seed))
    return sorted(kept, key=lambda r: r.path), duplicates


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Runs grouped by their ``GroupKey``, in the paper's order (``GroupKey.sort_key``)."""
    groups: dict[GroupKey, Group] = {}
    for run in runs:
        groups.setdefault(run.key, Group(run.key)).runs.append(run)
    return [groups[k] for k in sorted(groups, key=GroupKey.sort_key)]


def build_report(run_dirs: Iterable[Path]) -> Report:
    """Load, deduplicate and group the runs in ``run_dirs``."""
    loaded = [load_run(d) for d in run_dirs]
    runs, duplicates = drop_duplicate_seeds(r for r in loaded if isinstance(r, Run))
    return Report(group_runs(runs), duplicates, [r for r in loaded if isinstance(r, Failed)],
                  [r for r in loaded if isinstance(r, Unfinished)])


def joint_reference(key: GroupKey, groups: Iterable[Group]) -> Group | None:
    """The joint-bound row a continual row is compared with: same dataset and backbone, preferring the
    same method, then the same gate, then the same overrides; None for a bound row or when there is none."""
    if key.bound:
        return None
    candidates = [g for g in groups if g.key.bound == "joint"
                  and (g.key.dataset, g.key.backbone) == (key.dataset, key.backbone)]
    # max keeps the first of equals, and groups come sorted: the choice is deterministic
    return max(candidates, default=None, key=lambda g: (g.key.method == key.method, g.key.gate == key.gate,
                                                         g.key.variant == key.variant))


# ------------------------------------------------------------------------------------------------- tables


def _fmt(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}"


def _mean_std(stat: tuple[float, float] | None) -> str:
    return NA if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def _diff(stat: tuple[float, float] | None, other: float | None) -> float | None:
    """Mean - ``other``, from the mean as displayed (2 decimals) so the table adds up."""
    if stat is None or other is None:
        return None
    return round(round(stat[0], 2) - round(other, 2), 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def _fmt_diff(value: float | None) -> str:
    return NA if value is None else f"{value:+.2f}"


def _published(key: GroupKey) -> dict[str, paper_results.Published | None]:
    """Published numbers matching a row; all None for bounds and for splits other than the paper's."""
    if key.bound or key.num_tasks != paper_results.PAPER_NUM_TASKS or key.protocol not in ("", "hide"):
        return {"FA": None, "CA": None, "FFM": None, "gate FA": None}
    gate = None if key.gate == NO_GATE else key.gate
    found: dict[str, paper_results.Published | None] = {
        m: paper_results.main_table(key.dataset, key.backbone, key.method, m, gate) for m in PAPER_METRICS
    }
    found["gate FA"] = paper_results.gate_ablation(key.dataset, key.backbone, key.method, gate)
    return found


def _published_mean(published: paper_results.Published | None) -> float | None:
    return None if published is None else published.mean


def _joint_name(ref: GroupKey) -> str:
    name = ref.method if ref.gate == NO_GATE else f"{ref.method}/{ref.gate}"
    return f"{name} [{ref.variant}]" if ref.variant else name


def _joint_gap(group: Group, groups: Sequence[Group]) -> tuple[float | None, GroupKey | None]:
    """FA - joint FA and the joint row it was taken from (None, None without one)."""
    ref = joint_reference(group.key, groups)
    if ref is None:
        return None, None
    joint_fa = ref.stat("final_avg_acc")
    return _diff(group.stat("final_avg_acc"), None if joint_fa is None else joint_fa[0]), ref.key


def _has_joint(groups: Sequence[Group]) -> bool:
    return any(g.key.bound == "joint" for g in groups)


def _metric_cell(group: Group, metric_key: str) -> str:
    cell = _mean_std(group.stat(metric_key))
    count = len(group.reported(metric_key))
    if 0 < count < len(group.runs):  # a null is left out, never averaged: say over how many seeds
        cell += f" ({count} of {len(group.runs)} seeds)"
    return cell


def _joint_cell(group: Group, groups: Sequence[Group]) -> str:
    gap, ref = _joint_gap(group, groups)
    if ref is None or gap is None:
        return NA
    same = (ref.method, ref.gate, ref.variant) == (group.key.method, group.key.gate, group.key.variant)
    return _fmt_diff(gap) if same else f"{_fmt_diff(gap)} (vs {_joint_name(ref)} joint)"


def markdown_rows(groups: Sequence[Group], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the Markdown results table."""
    show_variant = any(g.key.variant for g in groups)
    show_joint = _has_joint(groups)
    header = ["dataset", "backbone", "method", "gate", "T", *(["overrides"] if show_variant else []),
              "n", "seeds", *(label for label, _ in METRICS), *(["FA - joint FA"] if show_joint else [])]
    if paper:
        header += ["paper FA", "Δ FA", "paper CA", "Δ CA", "paper FFM", "Δ FFM", "paper gate FA", "Δ gate FA"]
    rows = []
    for g in groups:
        k = g.key
        row = [k.dataset, k.backbone, k.method_label, k.gate, str(k.num_tasks),
               *([k.variant or "-"] if show_variant else []),
               str(len(g.runs)), ", ".join(g.seeds), *(_metric_cell(g, key) for _, key in METRICS),
               *([_joint_cell(g, groups)] if show_joint else [])]
        if paper:
            stats = {label: g.stat(key) for label, key in METRICS}
            pub = _published(k)
            for label, stat_label in (("FA", "FA"), ("CA", "CA"), ("FFM", "FFM"), ("gate FA", "FA")):
                published = pub[label]
                row += [NA if published is None else str(published),
                        _fmt_diff(_diff(stats[stat_label], _published_mean(published)))]
        rows.append(row)
    return header, rows


def csv_rows(groups: Sequence[Group], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the CSV table: one number per column, 2 decimals, ``n/a`` when missing.

    With joint-bound rows, three columns follow: ``bound`` (``joint`` or empty), ``joint_ref`` (the joint
    row a continual row is compared with, ``method[/gate] [overrides]``) and ``joint_gap_fa``.
    """
    show_joint = _has_joint(groups)
    header = ["dataset", "backbone", "method", "gate", "num_tasks", "overrides", "n_seeds", "seeds"]
    for label, _ in METRICS:
        header += [f"{label.lower()}_mean", f"{label.lower()}_std"]
    if paper:
        for label in PAPER_METRICS:
            low = label.lower()
            header += [f"paper_{low}_mean", f"paper_{low}_std", f"diff_{low}"]
        header += ["paper_gate_fa", "diff_gate_fa"]
    if show_joint:
        header += ["bound", "joint_ref", "joint_gap_fa"]
    show_fidelity = any(g.key.fidelity != CORRECTED for g in groups)
    header += ["fidelity"] if show_fidelity else []
    rows = []
    for g in groups:
        k = g.key
        stats = {label: g.stat(key) for label, key in METRICS}
        row = [k.dataset, k.backbone, k.method, k.gate, str(k.num_tasks), k.variant, str(len(g.runs)),
               " ".join(g.seeds)]
        for label, _ in METRICS:
            stat = stats[label]
            row += [NA, NA] if stat is None else [_fmt(stat[0]), _fmt(stat[1])]
        if paper:
            pub = _published(k)
            for label in PAPER_METRICS:
                p = pub[label]
                row += [_fmt(_published_mean(p)), _fmt(p.std if p else None),
                        _fmt(_diff(stats[label], _published_mean(p)))]
            gate_fa = pub["gate FA"]
            row += [_fmt(_published_mean(gate_fa)), _fmt(_diff(stats["FA"], _published_mean(gate_fa)))]
        if show_joint:
            gap, ref = _joint_gap(g, groups)
            row += [k.bound, "" if ref is None else _joint_name(ref), _fmt(gap)]
        row += [k.fidelity] if show_fidelity else []
        rows.append(row)
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def caption(paper: bool, joint: bool = False) -> str:
    text = (f"Percent; FA = final average accuracy, CA = cumulative average accuracy, FFM = forgetting, "
            f"TII = task-identity inference accuracy ({NA} for methods that do not infer the task); "
            f"{STD_NOTE}.")
    if joint:
        text += (" (joint) = the non-continual upper bound, trained on all classes at once; FA - joint FA = "
                 "this row's FA minus the joint FA of the same dataset and backbone, from the same method "
                 "where there is one, else from the joint row named.")
    if paper:
        text += (" paper = published mean ± std (NoRGa, NeurIPS 2024, Table 1: L2P, DualPrompt, S-Prompt, "
                 f"CODA-Prompt, HiDe-Prompt, NoRGa; {paper_results.PAPER_NUM_TASKS} tasks, seeds 40/42/44), "
                 f"paper gate FA = the gate ablation's FA; Δ = reproduced mean - published mean; {NA} = not "
                 "published for this row or split.")
    return text


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) if lines else "None."


def render_markdown(report: Report, paper: bool) -> str:
    """The results table, then the duplicate seeds (if any), failed runs and unfinished runs."""
    groups = report.groups
    parts = ["## Results", "", caption(paper, _has_joint(groups)), ""]
    parts.append(_md_table(*markdown_rows(groups, paper)) if groups else "No finished runs.")
    parts += protocol_section(groups, paper)  # rows labelled by protocol, split and backbone tag
    if report.duplicates:
        parts += ["", "## Duplicate seeds", "",
                  "A seed finished more than once in a row: only its newest run (metrics.json time) is used.",
                  "", _bullets([d.line(markdown=True) for d in report.duplicates])]
    parts += ["", "## Failed runs", "", _bullets([f.line(markdown=True) for f in report.failed])]
    parts += ["", "## Unfinished runs", "", _bullets([u.line(markdown=True) for u in report.unfinished])]
    return "\n".join(parts) + "\n"


def render_csv(groups: Sequence[Group], paper: bool) -> str:
    header, rows = csv_rows(groups, paper)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


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


# ---------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="norga-report",
        description=(
            "Summarize runs: every directory below DIR with a metrics.json or a .hydra/ folder is a run. "
            "Finished runs are grouped by (dataset, backbone, method, gate, number of tasks, other task "
            "overrides, bound) and shown as mean ± std over seeds of FA, CA, FFM and TII, in the paper's "
            "method order, joint upper bounds last. The std is numpy's population std (ddof=0). A seed "
            "finished twice in one row counts once, the newest run. Failed and unfinished runs are listed "
            "separately, never averaged."
        ),
        epilog="Exit status: 0 when runs were reported, 1 on duplicate seeds with --strict, 2 when no run "
        "directory was found.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="directories searched recursively")
    parser.add_argument("--paper", action="store_true",
                        help="add the published FA/CA/FFM (Table 1, all six methods) and the gate ablation's "
                        "FA, each with reproduced - published")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 1) when a seed finished more than once in a row, instead of using "
                        "the newest run")
    parser.add_argument("--plot", type=Path, metavar="OUTDIR",
                        help="write per-group accuracy-curve and accuracy-matrix PNGs to OUTDIR")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV to FILE")
    parser.add_argument("--format", choices=("md", "csv"), default="md",
                        help="what to print: Markdown (default) or CSV; with csv, notes go to stderr")
    return parser


def _print_notes_csv(report: Report) -> None:
    """With CSV on stdout, what Markdown shows below the table goes to stderr, one line each."""
    for d in report.duplicates:
        print(f"duplicate seed: {d.line()}", file=sys.stderr)
    for f in report.failed:
        print(f"failed: {f.line()}", file=sys.stderr)
    for u in report.unfinished:
        print(f"unfinished: {u.line()}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for missing in (d for d in args.dirs if not d.exists()):
        print(f"norga-report: no such file or directory: {missing}", file=sys.stderr)
    run_dirs = find_run_dirs([d for d in args.dirs if d.exists()])
    if not run_dirs:
        searched = ", ".join(map(str, args.dirs))
        print(f"norga-report: no runs found under {searched} "
              "(looked for directories with metrics.json or .hydra/)", file=sys.stderr)
        return 2

    report = build_report(run_dirs)
    if args.strict and report.duplicates:
        print("norga-report: error: seeds finished more than once (--strict):", file=sys.stderr)
        for d in report.duplicates:
            runs = ", ".join(str(r.path) for r in (d.used, *d.ignored))
            print(f"  {d.key.label} seed {d.seed}: {runs}", file=sys.stderr)
        return 1
    # with CSV on stdout, everything that is not the table goes to stderr so the output stays parseable
    notes = sys.stderr if args.format == "csv" else sys.stdout
    if args.format == "csv":
        sys.stdout.write(render_csv(report.groups, args.paper))
        _print_notes_csv(report)
    else:
        sys.stdout.write(render_markdown(report, args.paper))
        if args.csv is not None or args.plot is not None:
            print()
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(render_csv(report.groups, args.paper), encoding="utf-8")
        print(f"CSV written to {args.csv}", file=notes)
    if args.plot is not None:
        for group in report.groups:
            for path in plot_group(group, args.plot):
                print(f"plot: {path}", file=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
