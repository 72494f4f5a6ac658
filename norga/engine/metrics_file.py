"""``metrics.json``: what a run is (dataset, backbone, method, gate, bound, seed) and what it measured,
rewritten atomically after every task (``finished: false`` until the last), and why a run stopped when it
failed (``error``, also in ``run.log``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from norga.engine.logging import to_run_log
from norga.errors import NorgaError
from norga.fidelity import fidelity_of_config

log = logging.getLogger("norga")


class MetricsFile:
    """``<run_dir>/metrics.json`` of the run configured by ``cfg`` (``config``: it resolved); only the main
    process writes."""

    def __init__(self, run_dir: Path, cfg: DictConfig, config: dict, is_main: bool) -> None:
        self.path = run_dir / "metrics.json"
        self.cfg = cfg
        self.config = config
        self.is_main = is_main

    def description(self, finished: bool) -> dict[str, Any]:
        """The keys that say what the run is, first in the file."""
        cfg = self.cfg
        return {"finished": finished, "dataset": cfg.dataset.name, "backbone": cfg.backbone.name,
                "method": cfg.method.name, "gate": cfg.method.get("gate"), "bound": cfg.get("bound"),
                "fidelity": fidelity_of_config(cfg), "seed": cfg.seed}

    def write(self, metrics: dict) -> dict:
        """Replace the file with ``metrics`` atomically (a reader never sees half a file); returns them."""
        if self.is_main:
            tmp = self.path.with_name(".metrics.json.tmp")
            tmp.write_text(json.dumps(metrics, indent=1))
            tmp.replace(self.path)
        return metrics

    def recorded(self) -> dict:
        """What an earlier part of the run wrote, else what is known before anything is built (the config)."""
        try:
            metrics = json.loads(self.path.read_text())
            if isinstance(metrics, dict):
                return metrics
        except (OSError, ValueError):
            pass
        description = self.description(False)
        del description["bound"], description["fidelity"]
        return {**description, "num_tasks": self.cfg.dataset.num_tasks, "tasks_done": 0, "acc_matrix": [],
                "config": self.config}

    def record_failure(self, err: BaseException, metrics: Callable[[], dict] | None, interrupted: Callable[[], str]
                       ) -> None:
        """Write why the run stopped to ``run.log`` and to the file (``metrics()`` as it stands, or what was
        recorded before the run was built; ``finished: false``, ``error``); the app shows it on the screen. An
        interruption is no error: the log says what the checkpoint holds (``interrupted()``)."""
        if isinstance(err, KeyboardInterrupt):
            log.warning("interrupted: %s", interrupted())
            return
        if not isinstance(err, Exception):
            return
        text = str(err) if isinstance(err, NorgaError) else f"{type(err).__name__}: {err}"
        to_run_log(text, exc=None if isinstance(err, NorgaError) else err)
        if not self.is_main:
            return
        try:
            stood = metrics() if metrics is not None else self.recorded()
            self.write({**stood, "finished": False, **({"error": text} if text else {})})
        except Exception:  # noqa: BLE001 - the run's own error is the one to report
            log.exception("could not record the error in %s", self.path)
