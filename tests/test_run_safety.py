"""A run directory is an append-only record, and every error a user can fix reaches the screen as one
paragraph, the run's ``run.log`` and its ``metrics.json``.

* A refused run (no ``resume=true`` in a directory that holds a run; a resume with a changed key) leaves the
  directory byte for byte as it was: Hydra used to rewrite ``.hydra/`` and append to ``run.log`` first.
* A resume keeps the original ``.hydra/`` and adds a line to ``resumes.log``.
* A failed run writes its error to ``run.log`` and ``metrics.json``; the report lists it as failed.
* No norga error prints a traceback; Ctrl-C says what the checkpoint holds and how to resume.
* The last line on the screen is ``done:``.
"""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from norga.config import register
from norga.errors import ConfigError, NorgaError

ROOT = Path(__file__).resolve().parents[1]
# the embedded default, shrunk to seconds
SMALL = ["logger=none", "device=cpu", "progress=false", "backbone.pretrained=false", "dataset.num_tasks=2",
         "train.epochs=1", "train.max_epochs=1", "train.batch_size=16", "train.max_batches=2",
         "train.max_stats_per_class=4", "eval.max_samples_per_task=20", "method.prompt_length=2",
         "method.prompt_layers=[0,1]"]


def compose_cfg(overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def app(*args, env=None):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) -> the SHA-256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run as the app leaves it (``.hydra/``, ``run.log``, checkpoints, ``metrics.json``)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    done = app(*SMALL, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ---- refusals leave the directory as it was ------------------------------------------------------------------
def test_start_without_resume_in_a_run_directory_changes_nothing(run_copy):
    before = digest(run_copy)
    done = app(*SMALL, f"hydra.run.dir={run_copy}")
    assert done.returncode == 1
    assert f"{run_copy} already holds a run" in done.stderr and "resume=true" in done.stderr
    assert str(run_copy / ".hydra" / "config.yaml") in done.stderr  # where the existing run's config is
    assert "Traceback" not in done.stdout + done.stderr
    assert digest(run_copy) == before


def test_resume_with_a_changed_key_changes_nothing(run_copy):
    before = digest(run_copy)
    done = app(*SMALL, f"hydra.run.dir={run_copy}", "resume=true", "optimizer.lr=0.01")
    assert done.returncode == 1
    assert "optimizer.lr: 0.03 -> 0.01" in done.stderr and str(run_copy / ".hydra" / "config.yaml") in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert digest(run_copy) == before


def test_resume_refused_by_the_checkpoint_changes_nothing(run_copy):
    """Killed before its first task ended, a run has a checkpoint but no metrics.json: the engine compares
    the config with last.pt's, still before Hydra or the run writes anything."""
    (run_copy / "metrics.json").unlink()
    before = digest(run_copy)
    done = app(*SMALL, f"hydra.run.dir={run_copy}", "resume=true", "train.batch_size=8")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "train.batch_size: 16 -> 8" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert digest(run_copy) == before


def test_resume_keeps_the_launch_record_and_logs_the_resume(run_copy):
    before = digest(run_copy)
    done = app(*SMALL, f"hydra.run.dir={run_copy}", "resume=true")
    assert done.returncode == 0, done.stderr[-3000:]
    after = digest(run_copy)
    assert {k: v for k, v in after.items() if k.startswith(".hydra/")} == \
        {k: v for k, v in before.items() if k.startswith(".hydra/")}
    (line,) = (run_copy / "resumes.log").read_text().splitlines()
    assert "resume=true" in line and f"hydra.run.dir={run_copy}" in line and line[:4].isdigit()
    assert (run_copy / "run.log").read_text().count("done: FA") == 2  # appended to, not rewritten


# ---- failures are recorded ------------------------------------------------------------------------------------
def test_missing_data_is_refused_before_the_run_folder_exists(tmp_path):
    """``dataset=cifar100`` without the data used to leave a run folder the report listed as failed."""
    run_dir = tmp_path / "run"
    done = app(*SMALL, "dataset=cifar100", f"paths.data_dir={tmp_path}", f"hydra.run.dir={run_dir}")
    assert done.returncode == 1
    assert done.stderr.startswith("error: CIFAR-100 not found"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not run_dir.exists()


def test_run_refused_while_building_records_the_error_and_the_report_skips_it(tmp_path):
    """Missing weights are found while building: the folder holds the error, marked refused, and the report
    counts it apart from failed and unfinished runs."""
    from norga.report import Refused, build_report, load_run, render_markdown

    run_dir = tmp_path / "run"
    error = "backbone 'dino': checkpoint not found"
    done = app(*SMALL, "backbone=dino", "backbone.pretrained=true", f"paths.checkpoint_dir={tmp_path}",
               f"hydra.run.dir={run_dir}")
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {error}"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"[ERROR] - {error}" in (run_dir / "run.log").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finished"] is False and metrics["error"].startswith(error) and metrics["refused"] is True
    refused = load_run(run_dir)
    assert isinstance(refused, Refused) and refused.reason.startswith(error)
    report = build_report([run_dir])
    assert report.refused == [refused] and not report.failed and not report.unfinished
    assert "Skipped 1 run folder(s) refused before training started" in render_markdown(report, paper=False)


def test_a_method_that_cannot_take_the_config_is_a_config_error(tmp_path):
    """``method=l2p gate=tanh`` given to the engine directly (the app's validator refuses it before): the
    learner's ValueError is the user's to fix, not a crash, and the run is marked refused."""
    with pytest.raises(ConfigError, match="method=l2p takes no gate"):
        from norga.engine.run import ContinualRun

        ContinualRun(compose_cfg([*SMALL, "method=l2p", "gate=tanh"]), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "takes no gate" in metrics["error"] and metrics["refused"] is True


@pytest.mark.parametrize("name", [
    "norga.data.errors.DatasetNotFoundError", "norga.data.errors.DatasetFileError",
    "norga.models.checkpoint_formats.CheckpointNotFoundError",
    "norga.models.checkpoint_formats.CheckpointMismatchError", "norga.models.checkpoint_formats.CheckpointReadError",
    "norga.models.checkpoint_formats.UntrustedCheckpointError", "norga.engine.checkpoint.CorruptCheckpointError",
    "norga.engine.loops.NonFiniteLossError", "norga.errors.RunRefusedError", "norga.errors.ConfigError",
    "norga.preflight.SweepCheckError",
])
def test_user_errors_share_the_base_the_app_reports_without_traceback(name):
    from hydra.utils import get_class

    assert issubclass(get_class(name), NorgaError)


# ---- Ctrl-C ----------------------------------------------------------------------------------------------------
def test_interrupt_says_what_was_saved_and_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    # a terminal's Ctrl-C: SIGINT with its default disposition (a pytest-xdist worker ignores SIGINT, and a child
    # started from it would inherit that), and enough epochs that the run outlasts its first checkpoint
    longer = [*SMALL, "train.epochs=8", "train.max_epochs=8"]
    proc = subprocess.Popen([sys.executable, "run.py", *longer, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "last.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert f"interrupted: {run_dir / 'checkpoints' / 'last.pt'} holds the run up to task" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted; to continue, run: python run.py")
    assert last.endswith(f"hydra.run.dir={run_dir} resume=true")


# ---- the screen ends on done: --------------------------------------------------------------------------------
EVENTS: list = []


class RecordingLogger:
    """An experiment logger that notes when it finishes (``logger._target_``)."""

    run_id = None

    def start(self, *args, **kwargs):
        pass

    def log(self, *args, **kwargs):
        pass

    log_matrix = summary = log

    def finish(self, exit_code=0):
        EVENTS.append("logger finished")


def test_done_is_logged_after_the_experiment_logger_finishes(tmp_path):
    from norga.engine.run import ContinualRun

    class Lines(logging.Handler):
        def emit(self, record):
            EVENTS.append(record.getMessage())

    EVENTS.clear()
    logger, handler = logging.getLogger("norga"), Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        ContinualRun(compose_cfg([*SMALL, f"logger._target_={__name__}.RecordingLogger"]), tmp_path).run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert EVENTS[-2] == "logger finished" and EVENTS[-1].startswith("done: FA")


def test_wandb_prints_no_run_summary_of_its_own(tmp_path, monkeypatch):
    """W&B's console summary would follow the run's last line."""
    import wandb

    from norga.engine.logging import WandbLogger

    seen = {}

    class Run:
        id = "run-id"

        def define_metric(self, *args, **kwargs):
            pass

    def init(**kwargs):
        seen.update(kwargs)
        return Run()

    monkeypatch.setattr(wandb, "init", init)
    WandbLogger().start({}, tmp_path)
    assert seen["settings"].quiet is True
