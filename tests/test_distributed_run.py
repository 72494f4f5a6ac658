"""Whole runs under torchrun on 2 and 3 CPU processes (gloo) equal one process, on the learning fixture
(``tests/learning.py``): the same accuracy matrices and, within float rounding, the same learned tensors after
every task. The fixture's epochs end on batches of 1 and 2 samples, so some ranks get empty shards; only rank
0 writes outputs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from norga.engine.ranks import remove_stale_scratch
from tests.learning import PROCESSES_ATOL, assert_learns, assert_same_learned_state, fixture_overrides

ROOT = Path(__file__).resolve().parents[1]
MATRICES = ("acc_matrix", "acc_matrix_pre_tap", "tii_acc_matrix")


@pytest.fixture
def one_process(reference_run):
    run_dir, metrics = reference_run("norga")
    assert_learns(metrics)
    return run_dir, metrics


def torchrun(processes: int, run_dir: Path, method: str = "norga") -> subprocess.CompletedProcess:
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return subprocess.run([launcher, "--standalone", f"--nproc_per_node={processes}", "run.py",
                           *fixture_overrides([f"method={method}"]), f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


# 2 processes already leave a rank an empty shard (task 0's epochs end on a batch of 1); 3 (an odd count,
# and task 1's batch of 2 split 1/1/0) run with --runslow
@pytest.mark.parametrize("processes", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_whole_run_on_several_processes_equals_one_process(processes, one_process, tmp_path):
    """Augmentation is drawn per sample from (stage seed, sample), batches are split without loss (empty shards
    included), the contrastive term sees the global batch, statistics are gathered in dataset order."""
    one_dir, one = one_process
    done = torchrun(processes, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["finished"]
    for key in MATRICES:
        assert metrics[key] == one[key], key
    assert_same_learned_state(tmp_path, one_dir, tasks=2, atol=PROCESSES_ATOL)
    # only rank 0 writes, once
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "checkpoints", "metrics.json", "run.log"]
    assert (tmp_path / "run.log").read_text().count("done: FA") == 1
    # issue: "Under torchrun, rank 1's log lines appear twice, and temporary norga-rank* folders are left behind"
    console = done.stdout + done.stderr
    assert console.count("threads: ") == 1 and console.count("done: FA") == 1, console[-3000:]
    assert remove_stale_scratch() == []  # the other ranks removed their scratch run folders at exit


# The other methods' own data-parallel paths: prompt tokens and the global batch majority (L2P, whose
# empty shard once failed to reshape), the prompt mask and pull term (DualPrompt, S-Prompt++), the component
# prompts (CODA-Prompt), gathered statistics (SimpleCIL), in-place adapter merges and per-class statistics
# batches (MOS), CosFace on shards plus the orthogonality term (TUNA), covariances summed over ranks (InfLoRA),
# proxy heads and prototypes in every subspace (EASE, APER); the
# adapter methods' fixtures run without adapter dropout, which each process draws on its own. L2P runs by default,
# the rest with --runslow.
# RanPAC's first-session adapters draw dropout per process, so they match a 1-process run only in
# distribution (docs/algorithm.md#ranpac).
OTHERS = [pytest.param(m, marks=() if m == "l2p" else pytest.mark.slow)
          for m in ("l2p", "hide", "hide_lora", "dualprompt", "sprompt", "coda", "simplecil", "mos", "tuna",
                    "sdlora", "inflora", "ease", "aper")]


# InfLoRA's learned tensors agree to 1e-5 but for single entries of a trained up-projection (measured: 1.9e-4 in
# block 0's key up-projection of task 1, whose columns' norms are about 0.4, with the accuracies equal); Adam's
# normalised steps can turn the rounding differences of half-batch forwards into steps of up to lr where a gradient
# is near zero. That tensor differs by 6.5e-5 between merged and unmerged one-process runs too (tests/test_inflora.py).
ATOL = {"inflora": 1e-3}


@pytest.mark.parametrize("method", OTHERS)
def test_every_method_on_two_processes_equals_one_process(method, reference_run, tmp_path):
    one_dir, one = reference_run(method)
    done = torchrun(2, tmp_path, method)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["finished"]
    for key in MATRICES:
        assert metrics.get(key) == one.get(key), key
    assert_same_learned_state(tmp_path, one_dir, tasks=2, atol=ATOL.get(method, PROCESSES_ATOL))
