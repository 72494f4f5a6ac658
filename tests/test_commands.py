"""Commands a user runs must start: every script in ``benchmarks/`` and ``scripts/`` runs here on a tiny
configuration (a command that no longer starts fails CI), and so does every command of the README that can run
offline (the others compose their config, which catches a renamed key or option)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.learning import METHOD_LEARN

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
TINY = ["logger=none", "progress=false", "dataset.num_tasks=2", "train.max_epochs=1", "train.max_batches=2",
        "train.max_stats_per_class=4", "eval.max_samples_per_task=8", "train.batch_size=4"]


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_script_is_covered_here():
    scripts = {p.relative_to(ROOT).as_posix() for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py")}
    assert scripts == {"benchmarks/step.py", "benchmarks/eval_passes.py", "scripts/pretrain_embedded_vit.py",
                       "scripts/mutants.py"}, "a new script needs a test that runs it"


@pytest.mark.parametrize("method", METHODS)
def test_step_benchmark_runs_for_every_method(method, capsys):
    step = load_script(ROOT / "benchmarks" / "step.py")
    speedup = step.main([f"method={method}", *METHOD_LEARN.get(method, []), "logger=none", "train.batch_size=2",
                         "dataset.num_tasks=2", "--iters", "1", "--warmup", "1", "--classes-per-task", "2"])
    out = capsys.readouterr().out
    assert speedup > 0 and f"method {method}" in out and out.strip().splitlines()[-1].startswith("speedup ")


def test_eval_passes_benchmark_runs(capsys):
    bench = load_script(ROOT / "benchmarks" / "eval_passes.py")
    result = bench.main(["dataset.num_tasks=2", "train.max_batches=2", "eval.max_samples_per_task=8"])
    assert result["vit_passes"] <= result["bound"] + 1e-3 < result["reference"]
    assert "reference / this run" in capsys.readouterr().out


def test_pretraining_script_runs_on_a_tiny_budget(tmp_path, capsys):
    script = load_script(ROOT / "scripts" / "pretrain_embedded_vit.py")
    script.main(["--steps", "2", "--num-classes", "4", "--out", str(tmp_path / "vit.safetensors"), "--threads", "1"])
    assert (tmp_path / "vit.safetensors").stat().st_size > 0
    assert "digits linear probe" in capsys.readouterr().out


def test_mutation_check_catches_a_listed_mutant():
    done = subprocess.run([sys.executable, "scripts/mutants.py", "--only", "forgetting-without-last-row"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CAUGHT" in done.stdout and "1 of 1 mutants caught" in done.stdout
    listed = subprocess.run([sys.executable, "scripts/mutants.py", "--list"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    assert "resume-drops-optimizer-state" in listed and "eval-uses-true-task" in listed
