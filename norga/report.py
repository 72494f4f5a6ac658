"""Tables (and plots) over many runs' ``metrics.json``.

    python -m norga.report outputs/ [more dirs...] [--paper] [--plot OUTDIR] [--csv FILE] [--format md|csv]

A run directory is any directory below the given ones that holds ``metrics.json`` or a Hydra
``.hydra/config.yaml``. Finished runs are grouped by (dataset, backbone, method, gate, number of tasks,
other task overrides) and each group becomes one row of mean ± std over its seeds. Everything else
(``finished: false``, no or unreadable ``metrics.json``) is listed under "Unfinished runs", never averaged
and never dropped silently.
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
from norga.metrics import average_accuracy_curve, summarize

NA = "n/a"
NO_GATE = "-"

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
_ROW_KEYS = frozenset({"seed", "dataset", "backbone", "method", "gate", "method.gate", "sweep"})
_BOOKKEEPING_ROOTS = frozenset({"logger", "paths", "hydra", "wandb"})


def _result_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in RESULT_FREE_KEYS)


@dataclass(frozen=True, order=True)
class GroupKey:
    """What a table row stands for."""

    dataset: str
    backbone: str
    method: str
    gate: str  # NO_GATE for plain prefix tuning (HiDe-Prompt)
    num_tasks: int
    variant: str = ""  # sorted extra task overrides, "" when none

    @property
    def label(self) -> str:
        text = f"{self.dataset}/{self.backbone}/{self.method}/{self.gate} T={self.num_tasks}"
        return f"{text} [{self.variant}]" if self.variant else text

    @property
    def file_stem(self) -> str:
        gate = "nogate" if self.gate == NO_GATE else self.gate
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.dataset}_{self.backbone}_{self.method}_{gate}")
        stem = f"{stem}_T{self.num_tasks}"
        if self.variant:  # overrides can be long or hold '/', a hash keeps the name short and unique
            stem += "_v" + hashlib.sha1(self.variant.encode()).hexdigest()[:8]
        return stem


@dataclass(frozen=True)
class Run:
    """A finished run."""

    path: Path
    key: GroupKey
    seed: int | None
    values: dict[str, float | None]  # metrics.json key -> value
    acc_matrix: list[list[float]]


@dataclass(frozen=True)
class Unfinished:
    """A run directory that is not (or not yet) a usable result."""

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


@dataclass
class Group:
    key: GroupKey
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[str]:
        return sorted((str(r.seed) if r.seed is not None else "?" for r in self.runs), key=_seed_order)

    def stat(self, metric_key: str) -> tuple[float, float] | None:
        """(mean, std with ddof=0) over the runs that report ``metric_key``; None if none does."""
        values = [r.values[metric_key] for r in self.runs if r.values.get(metric_key) is not None]
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values))


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (sys.maxsize, seed)


# --------------------------------------------------------------------------------------------- discovery


def _is_run_dir(path: Path, filenames: Iterable[str]) -> bool:
    return "metrics.json" in filenames or (path / ".hydra" / "config.yaml").is_file()


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
    return NO_GATE if value is None or str(value).lower() in ("", "none", "null") else str(value)


def _row_label(info: dict[str, Any]) -> str:
    parts = [str(info.get(k) or "?") for k in ("dataset", "backbone", "method")]
    gate = _gate(info.get("gate")) if "gate" in info else "?"
    seed = info.get("seed")
    return "/".join([*parts, gate]) + f" seed={'?' if seed is None else seed}"


def load_run(run_dir: Path) -> Run | Unfinished:
    """Read one run directory; anything that is not a complete, readable result becomes ``Unfinished``."""
    info = _hydra_info(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        reason = "no metrics.json (no task finished yet, or it crashed before)"
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
    if "gate" in data:
        info["gate"] = data["gate"]
    acc = data.get("acc_matrix")
    acc = acc if isinstance(acc, list) else []
    total = info.get("num_tasks") if isinstance(info.get("num_tasks"), int) else None
    label = _row_label(info)

    if data.get("finished") is not True:
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
                   info.get("variant", ""))
    seed = info.get("seed") if isinstance(info.get("seed"), int) else None
    return Run(run_dir, key, seed, values, [[float(x) for x in row] for row in acc])


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Runs grouped by their ``GroupKey``, sorted."""
    groups: dict[GroupKey, Group] = {}
    for run in runs:
        groups.setdefault(run.key, Group(run.key)).runs.append(run)
    return [groups[k] for k in sorted(groups)]


def duplicate_seed_warnings(groups: Iterable[Group]) -> list[str]:
    """One line per seed that appears more than once in a group (both runs are averaged in)."""
    lines = []
    for group in groups:
        by_seed: dict[int | None, list[Path]] = defaultdict(list)
        for run in group.runs:
            by_seed[run.seed].append(run.path)
        for seed, paths in by_seed.items():
            if seed is not None and len(paths) > 1:
                lines.append(f"{group.key.label}: seed {seed} appears {len(paths)} times: "
                             + ", ".join(map(str, paths)))
    return lines


# ------------------------------------------------------------------------------------------------- tables


def _fmt(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}"


def _mean_std(stat: tuple[float, float] | None) -> str:
    return NA if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def _diff(stat: tuple[float, float] | None, published: paper_results.Published | None) -> float | None:
    """Reproduced mean - published mean, from the mean as displayed so the table adds up."""
    if stat is None or published is None:
        return None
    return round(round(stat[0], 2) - published.mean, 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def _fmt_diff(value: float | None) -> str:
    return NA if value is None else f"{value:+.2f}"


def _published(key: GroupKey) -> dict[str, paper_results.Published | None]:
    """Published numbers matching a row; all None for splits other than the paper's."""
    if key.num_tasks != paper_results.PAPER_NUM_TASKS:
        return {"FA": None, "CA": None, "FFM": None, "gate FA": None}
    found: dict[str, paper_results.Published | None] = {
        m: paper_results.main_table(key.dataset, key.backbone, key.method, m) for m in PAPER_METRICS
    }
    gate = None if key.gate == NO_GATE else key.gate
    found["gate FA"] = paper_results.gate_ablation(key.dataset, key.backbone, key.method, gate)
    return found


def markdown_rows(groups: Sequence[Group], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the Markdown results table."""
    show_variant = any(g.key.variant for g in groups)
    header = ["dataset", "backbone", "method", "gate", "T", *(["overrides"] if show_variant else []),
              "n", "seeds", *(label for label, _ in METRICS)]
    if paper:
        header += ["paper FA", "Δ FA", "paper CA", "Δ CA", "paper FFM", "Δ FFM", "paper gate FA", "Δ gate FA"]
    rows = []
    for g in groups:
        k = g.key
        stats = {label: g.stat(key) for label, key in METRICS}
        row = [k.dataset, k.backbone, k.method, k.gate, str(k.num_tasks),
               *([k.variant or "-"] if show_variant else []),
               str(len(g.runs)), ", ".join(g.seeds), *(_mean_std(stats[label]) for label, _ in METRICS)]
        if paper:
            pub = _published(k)
            for label, stat_label in (("FA", "FA"), ("CA", "CA"), ("FFM", "FFM"), ("gate FA", "FA")):
                published = pub[label]
                row += [NA if published is None else str(published),
                        _fmt_diff(_diff(stats[stat_label], published))]
        rows.append(row)
    return header, rows


def csv_rows(groups: Sequence[Group], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the CSV table: one number per column, 2 decimals, ``n/a`` when missing."""
    header = ["dataset", "backbone", "method", "gate", "num_tasks", "overrides", "n_seeds", "seeds"]
    for label, _ in METRICS:
        header += [f"{label.lower()}_mean", f"{label.lower()}_std"]
    if paper:
        for label in PAPER_METRICS:
            low = label.lower()
            header += [f"paper_{low}_mean", f"paper_{low}_std", f"diff_{low}"]
        header += ["paper_gate_fa", "diff_gate_fa"]
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
                row += [_fmt(p.mean if p else None), _fmt(p.std if p else None), _fmt(_diff(stats[label], p))]
            gate_fa = pub["gate FA"]
            row += [_fmt(gate_fa.mean if gate_fa else None), _fmt(_diff(stats["FA"], gate_fa))]
        rows.append(row)
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def caption(paper: bool) -> str:
    text = (f"Percent; FA = final average accuracy, CA = cumulative average accuracy, FFM = forgetting, "
            f"TII = task-identity inference accuracy; {STD_NOTE}.")
    if paper:
        text += (" paper = published mean ± std (NoRGa, NeurIPS 2024; "
                 f"{paper_results.PAPER_NUM_TASKS} tasks, seeds 40/42/44), paper gate FA = the gate "
                 f"ablation's FA; Δ = reproduced mean - published mean; {NA} = not published for this row "
                 "or split.")
    return text


def render_markdown(groups: Sequence[Group], unfinished: Sequence[Unfinished], paper: bool) -> str:
    parts = ["## Results", "", caption(paper), ""]
    parts.append(_md_table(*markdown_rows(groups, paper)) if groups else "No finished runs.")
    parts += ["", "## Unfinished runs", ""]
    if unfinished:
        rows = [[str(u.path), u.label, u.progress, u.reason] for u in unfinished]
        parts.append(_md_table(["path", "row", "progress", "reason"], rows))
    else:
        parts.append("None.")
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
            "Summarize runs: every directory below DIR with a metrics.json or a .hydra/config.yaml is a run. "
            "Finished runs are grouped by (dataset, backbone, method, gate, number of tasks, other task "
            "overrides) and shown as mean ± std over seeds of FA, CA, FFM and TII. The std is numpy's "
            "population std (ddof=0). Unfinished or unreadable runs are listed separately, not averaged."
        ),
        epilog="Exit status: 0 when runs were reported, 2 when no run directory was found.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="directories searched recursively")
    parser.add_argument("--paper", action="store_true",
                        help="add the published FA/CA/FFM and the gate ablation's FA, each with "
                        "reproduced - published")
    parser.add_argument("--plot", type=Path, metavar="OUTDIR",
                        help="write per-group accuracy-curve and accuracy-matrix PNGs to OUTDIR")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV to FILE")
    parser.add_argument("--format", choices=("md", "csv"), default="md",
                        help="what to print: Markdown (default) or CSV; with csv, notes go to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for missing in (d for d in args.dirs if not d.exists()):
        print(f"norga-report: no such file or directory: {missing}", file=sys.stderr)
    run_dirs = find_run_dirs([d for d in args.dirs if d.exists()])
    if not run_dirs:
        searched = ", ".join(map(str, args.dirs))
        print(f"norga-report: no runs found under {searched} "
              "(looked for directories with metrics.json or .hydra/config.yaml)", file=sys.stderr)
        return 2

    loaded = [load_run(d) for d in run_dirs]
    groups = group_runs(r for r in loaded if isinstance(r, Run))
    unfinished = [r for r in loaded if isinstance(r, Unfinished)]
    # with CSV on stdout, everything that is not the table goes to stderr so the output stays parseable
    notes = sys.stderr if args.format == "csv" else sys.stdout
    for warning in duplicate_seed_warnings(groups):
        print(f"norga-report: warning: {warning}", file=sys.stderr)

    if args.format == "csv":
        sys.stdout.write(render_csv(groups, args.paper))
        for u in unfinished:
            print(f"unfinished: {u.path} ({u.label}, {u.progress}): {u.reason}", file=sys.stderr)
    else:
        sys.stdout.write(render_markdown(groups, unfinished, args.paper))
        if args.csv is not None or args.plot is not None:
            print()
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(render_csv(groups, args.paper), encoding="utf-8")
        print(f"CSV written to {args.csv}", file=notes)
    if args.plot is not None:
        for group in groups:
            for path in plot_group(group, args.plot):
                print(f"plot: {path}", file=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
