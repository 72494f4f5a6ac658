"""A run directory as an append-only record of one run.

It holds ``.hydra/`` (how the run was launched), ``run.log``, ``metrics.json``, ``checkpoints/`` and, once
resumed, ``resumes.log`` (a line per resume: time and command). A command that would change the record of the
run already in a directory is refused before anything in it is written: a start without ``resume=true``, a
resume whose config differs in keys that change results. Files already there are never rewritten, except
``metrics.json`` and the checkpoints, which the run itself updates as it goes.

Import-light (no torch): the app checks a directory here before it loads the engine.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from norga.errors import RunRefusedError

HYDRA_DIR = ".hydra"  # config.yaml, hydra.yaml, overrides.yaml
RESUMES_LOG = "resumes.log"
_UNCHANGED = "Nothing in it was changed."

# Keys that do not change a run's results: a resumed run may differ from its checkpoint in these, and the
# report does not split rows by them.
RESULT_FREE_KEYS = ("resume", "progress", "device", "logger", "paths", "train.num_workers", "train.threads",
                    "eval.cache")


class RunExistsError(RunRefusedError, FileExistsError):
    """A start without ``resume=true`` in a directory that holds a run."""


class ResumeMismatchError(RunRefusedError, ValueError):
    """A resume whose config differs from the run's in keys that change results."""


def record_files(run_dir: Path) -> list[str]:
    """What of a run ``run_dir`` holds already (paths relative to it); empty for a new directory."""
    found = [name for name in (f"{HYDRA_DIR}/config.yaml", "metrics.json") if (run_dir / name).is_file()]
    return found + [f"checkpoints/{p.name}" for p in sorted((run_dir / "checkpoints").glob("*.pt"))]


def config_file(run_dir: Path) -> str:
    """Where the config of the run in ``run_dir`` can be read."""
    for path, entry in ((run_dir / HYDRA_DIR / "config.yaml", ""),
                        (run_dir / "checkpoints" / "last.pt", " (its 'config' entry)"),
                        (run_dir / "metrics.json", " (its 'config' entry)")):
        if path.is_file():
            return f"{path}{entry}"
    return "not recorded"


def refuse_new_run(run_dir: Path) -> None:
    """Raise :class:`RunExistsError` if ``run_dir`` holds a run (a start without ``resume=true`` would
    overwrite its record)."""
    found = record_files(run_dir)
    if found:
        held = ", ".join(found[:4]) + (f", ... ({len(found)} files)" if len(found) > 4 else "")
        raise RunExistsError(
            f"{run_dir} already holds a run ({held}); its config is {config_file(run_dir)}. {_UNCHANGED} To "
            "continue that run, run the same command with resume=true; to start a new one, leave hydra.run.dir "
            "out (a new time-stamped directory) or name a directory that does not exist.")


def refuse_missing_last(run_dir: Path) -> None:
    """Raise :class:`RunRefusedError` if ``checkpoints/`` lacks ``last.pt`` but holds other checkpoints."""
    ckpt_dir = run_dir / "checkpoints"
    if not (ckpt_dir / "last.pt").is_file() and any(ckpt_dir.glob("*.pt")):
        raise RunRefusedError(
            f"cannot resume the run in {run_dir}: {ckpt_dir / 'last.pt'} is missing, but {ckpt_dir} holds other "
            f"checkpoints. {_UNCHANGED} Restore last.pt (a copy of the newest task_<t>.pt resumes after that "
            "task), or start a new run in a new directory.")


def refuse_changed_config(run_dir: Path, recorded: dict | None, config: dict) -> None:
    """Raise :class:`ResumeMismatchError` if a resume's ``config`` differs from the ``recorded`` one (both
    resolved) in keys that change results."""
    diff = config_differences(recorded, config) if recorded is not None else []
    if diff:
        old, new = flat(recorded or {}), flat(config)
        lines = "\n".join(f"  {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ResumeMismatchError(
            f"cannot resume the run in {run_dir}: the config differs from the run's in keys that change "
            f"results:\n{lines}\nIts config is {config_file(run_dir)}. {_UNCHANGED} Resume with the run's values "
            "(drop or revert these overrides), or start a new run in a new directory.")


def recorded_config(run_dir: Path) -> dict | None:
    """The resolved config ``metrics.json`` holds (for a run that stopped before its first checkpoint)."""
    try:
        config = json.loads((run_dir / "metrics.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None


def open_record(run_dir: Path, launch: dict[str, str], resumed: bool) -> None:
    """Start the record of a new run (``.hydra/<name>`` for each ``*.yaml`` entry of ``launch`` not there
    yet), or add a resume to an existing one (a line in ``resumes.log``: time, ``launch['command']``)."""
    hydra_dir = run_dir / HYDRA_DIR
    for name, text in launch.items():
        if name.endswith(".yaml") and not (hydra_dir / name).exists():
            hydra_dir.mkdir(parents=True, exist_ok=True)
            (hydra_dir / name).write_text(text)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resumed:
        command = launch.get("command") or shlex.join(["python", *sys.argv])
        with open(run_dir / RESUMES_LOG, "a", encoding="utf-8") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')}\t{command}\n")


def flat(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: value}``."""
    out = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, path + "."))
        else:
            out[path] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two resolved configs, ignoring result-free keys."""
    a, b = flat(old), flat(new)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not result_free(k)]


def result_free(key: str) -> bool:
    """Whether a dotted config key is (or lies under) one of :data:`RESULT_FREE_KEYS`."""
    return any(key == free or key.startswith(free + ".") for free in RESULT_FREE_KEYS)
