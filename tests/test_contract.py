"""The learner contract, for every method in ``conf/method/``: a method gets the engine's guarantees by being
added. On the learning fixture (``tests/learning.py``) each method runs end to end and learns; a run SIGKILLed in
the middle of task 1 (in an epoch after the first of its first trained stage, so the optimiser state matters;
a method that never trains in task 1 is killed in its evaluation) and resumed with ``resume=true`` ends with the
uninterrupted run's metrics and learned tensors; the stages it declares are valid; its config composes against
its own schema."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from norga.engine.run import ContinualRun
from norga.engine.stages import check_stages
from tests.learning import RESUME_ATOL, assert_learns, assert_same_learned_state, compose_cfg, fixture_overrides

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
COMPARED = ("acc_matrix", "tii_acc_matrix", "final_avg_acc", "cum_avg_acc", "forgetting", "tii_acc")


def test_every_method_is_covered():
    assert {"norga", "hide", "l2p", "dualprompt", "sprompt"} <= set(METHODS)


def kill_at(run_dir: Path, method: str, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NORGA_CRASH_AT": point}
    return subprocess.run([sys.executable, "run.py", *fixture_overrides([f"method={method}"]),
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("method", METHODS)
def test_method_composes_against_its_schema_and_declares_valid_stages(method, tmp_path):
    cfg = compose_cfg([f"method={method}"])
    assert cfg.method.name == method, f"conf/method/{method}.yaml must set name: {method}"
    run = ContinualRun(cfg, tmp_path)
    for task in range(run.benchmark.num_tasks):
        check_stages(run.learner.stages(task), task)


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_learns_and_resumes_exactly(method, tmp_path, reference_run):
    reference_dir, reference = reference_run(method)
    assert reference["finished"] and reference["method"] == method
    assert_learns(reference)

    killed_dir = tmp_path / "killed"
    # mid-training in task 1; a method that does not train in task 1 is killed in its evaluation
    killed = kill_at(killed_dir, method, "task1/*/epoch1/step1|task1/*/test0")
    assert killed.returncode == -9, f"the run was not killed:\n{killed.stderr[-3000:]}"
    assert not json.loads((killed_dir / "metrics.json").read_text())["finished"]

    resumed = ContinualRun(compose_cfg([f"method={method}", "resume=true"]), killed_dir).run()
    assert resumed["finished"]
    for key in COMPARED:
        assert resumed[key] == reference[key], key
    assert_same_learned_state(killed_dir, reference_dir, tasks=2, atol=RESUME_ATOL)
