"""Finding run directories and reading each into a :class:`~norga.report.model.Run` (or why it is none), then
grouping runs into rows."""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from norga.engine.record import result_free
from norga.fidelity import fidelity_of_record
from norga.metrics import summarize
from norga.report.model import (
    METRICS,
    NO_GATE,
    Duplicate,
    Failed,
    Group,
    GroupKey,
    Refused,
    Report,
    Run,
    Unfinished,
)
from norga.report_protocols import protocol_labels

# Task overrides (from .hydra/overrides.yaml) that do not make a run a different experiment: the row's own
# keys and bookkeeping. Anything else (optimizer.lr=..., debug=..., method.prompt_length=...) starts a
# separate group so that different settings are never averaged together.
_ROW_KEYS = frozenset({"seed", "dataset", "backbone", "method", "gate", "method.gate", "sweep", "bound", "fidelity"})
_BOOKKEEPING_ROOTS = frozenset({"logger", "paths", "hydra", "wandb"})


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
        if key in _ROW_KEYS or key.split(".", 1)[0] in _BOOKKEEPING_ROOTS or result_free(key):
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


def load_run(run_dir: Path) -> Run | Failed | Refused | Unfinished:
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
        if data.get("refused") is True:
            return Refused(run_dir, label, 0, total, _first_line(data.get("error")))
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
                  [r for r in loaded if isinstance(r, Unfinished)], [r for r in loaded if isinstance(r, Refused)])


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
