"""The real app as researchers run it: a two-seed multirun of the embedded default through the joblib
launcher, outputs kept apart, W&B offline files holding the final metrics, and the report over them."""

import json
import os
import subprocess
import sys
from pathlib import Path

from norga.engine.threads import cpu_cores

ROOT = Path(__file__).resolve().parents[1]
FAST = ["progress=false", "backbone.pretrained=false", "dataset.num_tasks=2", "train.epochs=1", "train.max_epochs=1",
        "train.batch_size=16", "train.max_batches=2", "train.max_stats_per_class=10",
        "dataset.source.train_fraction=0.25", "eval.max_samples_per_task=20", "method.prompt_length=2",
        "method.prompt_layers=[0,1]"]


def test_two_seed_joblib_multirun_with_offline_wandb_then_report(tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the launcher's share is under test
    done = subprocess.run(
        [sys.executable, "run.py", "-m", "seed=40,42", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "logger=wandb", f"hydra.sweep.dir={sweep_dir}", *FAST],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(sweep_dir.rglob("metrics.json"))
    names = [p.parent.relative_to(sweep_dir).as_posix() for p in runs]
    # one folder per row, one sub-folder per job named by its overrides
    assert names[0].startswith("digits_tiny_norga/0_") and "seed=40" in names[0]
    assert names[1].startswith("digits_tiny_norga/1_") and "seed=42" in names[1]
    share = max(1, cpu_cores() // 2)  # two jobs side by side share the cores
    for path, seed in zip(runs, (40, 42)):
        metrics = json.loads(path.read_text())
        assert metrics["finished"] and metrics["seed"] == seed
        assert f"threads: {share} " in (path.parent / "run.log").read_text()
        offline = list((path.parent / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, "one offline W&B run per job, inside the job's folder"
        assert list(offline[0].glob("run-*.wandb")), "the W&B run log"
        assert list(offline[0].glob("files/media/images/eval/acc_matrix_heatmap_*.png")), "the heatmap"
    a, b = (json.loads(p.read_text())["acc_matrix"] for p in runs)
    assert a != b, "different seeds must give different runs"

    report = subprocess.run([sys.executable, "-m", "norga.report", str(sweep_dir), "--format", "csv"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    rows = report.stdout.splitlines()[1:]
    assert len(rows) == 1 and ",2,40 42," in rows[0]


def test_wandb_summary_holds_the_final_metrics(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from norga.config import register
    from norga.engine.logging import WandbLogger
    from norga.engine.run import ContinualRun

    seen = {}
    real_finish = WandbLogger.finish

    def finish(self, exit_code=0):
        if self.run is not None:
            seen.update({k: self.run.summary[k] for k in ("final_avg_acc", "cum_avg_acc", "forgetting", "tii_acc")})
            seen["dir"] = self.run.dir
        real_finish(self, exit_code)

    monkeypatch.setattr(WandbLogger, "finish", finish)
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=FAST + ["logger=wandb"])
    metrics = ContinualRun(cfg, tmp_path).run()
    for key in ("final_avg_acc", "cum_avg_acc", "forgetting", "tii_acc"):
        assert seen[key] == metrics[key]
    assert str(tmp_path) in seen["dir"]
