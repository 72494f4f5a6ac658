"""Crash safety: a run killed (SIGKILL) at any point and resumed ends exactly where an uninterrupted run
ends, in its accuracy matrices and in every learned tensor (on the learning fixture, ``tests/learning.py``);
checkpoints are atomic; bad checkpoints, changed configs and non-finite losses fail clearly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from norga.engine.checkpoint import CorruptCheckpointError, load_checkpoint, save_atomic
from tests.learning import RESUME_ATOL, assert_learns, assert_same_learned_state, fixture_overrides

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("acc_matrix", "acc_matrix_pre_tap", "tii_acc_matrix", "final_avg_acc", "cum_avg_acc", "forgetting",
            "tii_acc")


def launch(run_dir: Path, extra=(), crash_at=None, logger="none"):
    env = {k: v for k, v in os.environ.items() if k != "NORGA_CRASH_AT"}
    if crash_at:
        env["NORGA_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "run.py", *fixture_overrides([f"logger={logger}"]),
                           f"hydra.run.dir={run_dir}", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def uninterrupted(reference_run):
    """The reference: the same run, uninterrupted (in this process: the same code as ``run.py``)."""
    run_dir, metrics = reference_run("norga")
    assert_learns(metrics)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


# One run, killed at each of these points in turn and resumed after each kill (mid-epoch, in an epoch after
# the first so that the optimiser state matters, is in tests/test_contract.py). A chain costs one run and
# checks more than separate kills: every resume starts from a directory an earlier resume wrote.
KILL_POINTS = [
    "checkpoint/last.pt",             # while the very first checkpoint is being written
    "task1/wtp_train/start",          # between the TII and the WTP stages
    "task1/wtp_tap/epoch1",           # during TAP
    "task1/evaluate/test0",           # during evaluation
]


def test_run_killed_at_every_kind_of_point_and_resumed_equals_uninterrupted_run(uninterrupted, tmp_path):
    reference_dir, reference = uninterrupted
    for kills, point in enumerate(KILL_POINTS):
        killed = launch(tmp_path, ["resume=true"] if kills else [], crash_at=point)
        assert killed.returncode == -9, f"the crash point {point} was never reached:\n{killed.stderr[-2000:]}"
        metrics = tmp_path / "metrics.json"
        assert not metrics.exists() or not json.loads(metrics.read_text())["finished"], point
    resumed = launch(tmp_path, ["resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["finished"]
    for key in COMPARED:
        assert metrics[key] == reference[key], key
    assert_same_learned_state(tmp_path, reference_dir, tasks=2, atol=RESUME_ATOL)
    # the first kill left no checkpoint (its resume starts afresh); each later one is resumed from
    assert (tmp_path / "run.log").read_text().count("resumed from") == len(KILL_POINTS) - 1


# what the next tests check needs no learning: one batch per epoch, one TII epoch
CHEAP = ["train.max_batches=1", "method.tii.epochs=1", "train.max_stats_per_class=10"]


def test_wandb_run_resumes_into_the_same_run_id(tmp_path):
    killed = launch(tmp_path, CHEAP, crash_at="task1/tii_train/start", logger="wandb")
    assert killed.returncode == -9
    assert launch(tmp_path, [*CHEAP, "resume=true"], logger="wandb").returncode == 0
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({name.rsplit("-", 1)[1] for name in runs}) == 1, runs


def test_atomic_write_leaves_old_or_new_file(tmp_path):
    path = tmp_path / "state.pt"
    save_atomic({"v": 1}, path)
    save_atomic({"v": 2}, path)
    assert load_checkpoint(path) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


def test_truncated_checkpoint_is_reported_with_its_path(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"weights": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptCheckpointError, match=f"{path}.*resume=false"):
        load_checkpoint(path)


def test_resume_with_truncated_last_checkpoint_stops_and_says_so(tmp_path):
    assert launch(tmp_path, CHEAP, crash_at="task0/wtp_train/start").returncode == -9
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    resumed = launch(tmp_path, [*CHEAP, "resume=true"])
    assert resumed.returncode != 0 and "cannot be read" in resumed.stderr and str(last) in resumed.stderr


def test_non_finite_loss_stops_with_its_place_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from norga.config import register
    from norga.engine.loops import NonFiniteLossError
    from norga.engine.run import ContinualRun
    from norga.methods import hide_prompt

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=fixture_overrides())
    monkeypatch.setattr(hide_prompt, "contrastive_loss", lambda *a: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"task 1 WTP epoch 1/2, step 0"):
        ContinualRun(cfg, tmp_path).run()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert not metrics["finished"] and "non-finite loss" in metrics["error"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["cursor"] == {"task": 0, "stage": "wtp_train",
                                                                               "epoch": 0}
