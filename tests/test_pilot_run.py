"""The PILOT protocol end to end through ``run.py``: a run on a generated tree in PILOT's layout records its
protocol, class order, test counts and the four accuracies; ObjectNet is refused in seconds without the
licence accepted; ``+sweep=pilot_table`` without data fails at once listing everything missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from norga.metrics.pooled import four_accuracies
from tests.fake_datasets import make_split_folders

ROOT = Path(__file__).resolve().parents[1]


def app(*args: str, env: dict | None = None, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return done, time.perf_counter() - start


def test_pilot_run_on_imagenet_a_in_pilots_layout(tmp_path):
    """python run.py protocol=pilot dataset=imagenet_a backbone=tiny method=simplecil debug=smoke
    paths.data_dir=<tree>, on 10 classes (B0Inc5) whose test sets differ in size."""
    data = tmp_path / "data"
    make_split_folders(data, "imagenet-a", num_classes=10, n_train=2, n_test=1, uneven=True)
    run_dir = tmp_path / "run"
    done, _ = app("protocol=pilot", "dataset=imagenet_a", "backbone=tiny", "method=simplecil", "debug=smoke",
                  f"paths.data_dir={data}", "dataset.source.expected_classes=10", "dataset.num_tasks=2",
                  "eval.max_samples_per_task=100", "progress=false", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["finished"] and m["protocol"] == "pilot"
    order = [int(c) for c in np.random.RandomState(1993).permutation(10)]
    assert m["class_order"] == order and m["split"] == "B0Inc5" and m["order"] == "np-seed-1993"
    # class k has 1 + k test images: each task's count is the sum over its classes
    assert m["test_counts"] == [sum(1 + c for c in order[:5]), sum(1 + c for c in order[5:])]
    assert m["label"] == "imagenet_a/pilot-zip/np-seed-1993/B0Inc5/tiny/pilot"
    four = four_accuracies(m["acc_matrix"], m["test_counts"])
    for key, value in four.items():
        assert m[key] == pytest.approx(value)
    assert m["acc_last_taskmean"] == pytest.approx(m["final_avg_acc"])
    assert m["acc_avg_taskmean"] == pytest.approx(m["cum_avg_acc"])
    log = (run_dir / "run.log").read_text()
    assert "dataset imagenet_a: 10 classes, train 20 images, test 55 images, split pilot-zip" in log
    assert f"pooled A_B {m['acc_last_pooled']:.2f} Ā {m['acc_avg_pooled']:.2f}" in log


def test_objectnet_without_the_licence_accepted_is_refused_in_seconds(tmp_path):
    make_split_folders(tmp_path / "data", "objectnet", num_classes=2)
    run_dir = tmp_path / "run"
    done, seconds = app("dataset=objectnet", f"paths.data_dir={tmp_path / 'data'}", "logger=none",
                        f"hydra.run.dir={run_dir}")
    assert done.returncode == 1 and seconds < 60, (seconds, done.stderr[-2000:])
    assert "ObjectNet may never be used to tune the parameters of any model" in done.stderr
    assert "dataset.accept_license=true" in done.stderr and "Traceback" not in done.stderr
    assert not run_dir.exists()


def test_pilot_table_without_data_lists_everything_missing_at_once(tmp_path):
    for name in ("data", "hf"):
        (tmp_path / name).mkdir()
    env = {"NORGA_DATA_DIR": str(tmp_path / "data"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    sweep_dir = tmp_path / "sweep"
    done, seconds = app("+sweep=pilot_table", f"hydra.sweep.dir={sweep_dir}", env=env, cwd=tmp_path)
    report = done.stderr
    assert done.returncode == 1 and seconds < 180, (seconds, report[-2000:])  # ~40 s on 2 loaded cores
    assert report.startswith("error: the sweep cannot start: 42 jobs checked")
    for missing in ("CUB-200 (PILOT's split) not found", "ImageNet-R not found", "ImageNet-A not found",
                    "OmniBenchmark-300 not found", "VTAB-CIL (50 classes) not found", "dataset=objectnet is refused",
                    "backbone 'augreg_in21k'"):
        assert missing in report
    assert not sweep_dir.exists()
