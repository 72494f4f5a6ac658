"""A run as the app and API users start it: the composed config checked against its schemas
(:func:`norga.config.validate`), then the engine (:class:`norga.engine.run.ContinualRun`).

The engine takes a config as composed and knows no schema; this module is where the two layers meet.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from norga.config import validate
from norga.engine.run import ContinualRun


def start(cfg: DictConfig, run_dir: str | Path, launch: dict[str, str] | None = None,
          parallel_jobs: int = 1) -> ContinualRun:
    """Check ``cfg`` (:class:`norga.errors.ConfigError` naming every problem, before anything is built or
    written) and build its run in ``run_dir`` (:class:`ContinualRun` has the arguments)."""
    validate(cfg)
    return ContinualRun(cfg, run_dir, launch, parallel_jobs)


def run(cfg: DictConfig, run_dir: str | Path, launch: dict[str, str] | None = None, parallel_jobs: int = 1) -> dict:
    """Check and run ``cfg`` with outputs in ``run_dir``; returns the final metrics."""
    return start(cfg, run_dir, launch, parallel_jobs).run()
