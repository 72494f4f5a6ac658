"""A whole run under torchrun on 2 CPU processes (gloo): it finishes, only rank 0 writes outputs, and the
training data of each global batch is split over the ranks without loss or duplication."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["progress=false", "backbone.pretrained=false", "dataset.num_tasks=2", "train.epochs=1", "tii.epochs=1",
        "tap.epochs=1", "tii.tap.epochs=1", "train.batch_size=16", "train.max_batches=2",
        "eval.max_samples_per_task=20", "method.prompt_length=2", "method.prompt_layers=[0,1]", "logger=none",
        "device=cpu"]


def test_two_process_run_writes_metrics_once(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "run.py", *FAST, f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["finished"] and len(metrics["acc_matrix"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "checkpoints", "metrics.json", "run.log"]
    assert (tmp_path / "run.log").read_text().count("done: FA") == 1


def test_whole_run_on_two_processes_equals_one_process(tmp_path):
    """Augmentation is drawn per sample from (stage seed, sample), batches are split without loss, the
    contrastive term sees the global batch, statistics are gathered in dataset order: same numbers."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    one = subprocess.run([sys.executable, "run.py", *FAST, f"hydra.run.dir={tmp_path / 'one'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "run.py", *FAST,
                          f"hydra.run.dir={tmp_path / 'two'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    for key in ("acc_matrix", "acc_matrix_pre_tap", "tii_acc_matrix"):
        assert a[key] == b[key], key
