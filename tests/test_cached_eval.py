"""Cached evaluation (each test image's frozen features once per run, its prompted features once per prompt)
is an optimisation only: for every method it gives the accuracy matrices of recomputing everything batch by
batch (``eval.cache=false``), and with test-time batchwise selection (``method.batchwise_prompt``) it makes
the same choice for every image: its test batch's majority (docs/algorithm.md#batchwise-prompt-selection)."""

import pytest
import torch

from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from tests.learning import ROOT, compose_cfg

# every method (a new conf/method/*.yaml is picked up), and those that select prompts per test image
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
SELECTING = ["norga", "hide", "l2p", "dualprompt", "sprompt"]


def test_every_shipped_method_is_covered():
    assert {"norga", "hide", "l2p", "dualprompt", "sprompt", "coda", "simplecil", "ranpac"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_uncached_evaluation_gives_the_runs_accuracy_matrix(method, reference_run, tmp_path):
    """The reference run evaluated with the cache; its checkpoints re-evaluated without it (the reference
    path) give the same accuracy and task-identification matrices."""
    run_dir, metrics = reference_run(method)
    run = ContinualRun(compose_cfg([f"method={method}", "eval.cache=false"]), tmp_path)
    assert not run.evaluator.cache
    learner = run.learner
    acc, tii = [], []
    for task in range(len(metrics["acc_matrix"])):
        state = torch.load(run_dir / "checkpoints" / f"task_{task}.pt", map_location="cpu", weights_only=True)
        learner.load_state_dict(state["learner"])
        learner.eval_mode()
        result = run.evaluator.evaluate(learner, task)
        acc.append(result.accs)
        tii.append(result.tii_accs)
    assert acc == metrics["acc_matrix"]
    assert tii == metrics["tii_acc_matrix"]


def random_learner(tmp_path, method):
    """A learner of ``method`` with batchwise selection on and random learned values (no training): its
    selections differ from image to image, so the batch majority overrules many of them."""
    run = ContinualRun(compose_cfg([f"method={method}", "method.batchwise_prompt=true"]), tmp_path)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in run.learner.modules().values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
    run.learner.eval_mode()
    return run


@pytest.mark.parametrize("method", SELECTING)
def test_cached_and_uncached_batchwise_selection_make_the_same_choice(method, tmp_path):
    run = random_learner(tmp_path, method)
    learner, batch = run.learner, 8
    assert learner.batchwise_prompt and learner.eval_cacheable
    results = {cache: Evaluator(run.benchmark, run.device, batch, cache=cache, progress=False, max_samples=40)
               .evaluate(learner, 1) for cache in (True, False)}
    overruled = 0
    for task, (cached, direct) in enumerate(zip(results[True].tasks, results[False].tasks)):
        assert torch.equal(cached.selection, direct.selection), f"test task {task}: another prompt choice"
        assert torch.equal(cached.predictions, direct.predictions)
        assert cached.acc == direct.acc and cached.tii_acc == direct.tii_acc
        # the choice is the majority of each test batch's own selections (ties: the smaller ids)
        own = per_sample_selection(run, learner, task)
        for start in range(0, len(own), batch):
            rows = own[start:start + batch]
            expected = majority(rows)
            assert (cached.selection[start:start + batch] == expected).all(), (task, start)
            overruled += int((rows != expected).any(dim=1).sum())
    assert overruled > 0, "the batch majority never overruled an image's own choice: the test shows nothing"


def per_sample_selection(run, learner, task):
    """Each test image's own selection (evaluation's subset of 40 evenly spread images, in order)."""
    dataset = run.benchmark.test_set(task)
    step = len(dataset) / 40
    x = torch.stack([dataset[int(i * step)][0] for i in range(40)])
    with torch.no_grad():
        return learner.select(learner.query(x), 1)


def majority(rows: torch.Tensor) -> torch.Tensor:
    """The k ids picked most often by the rows (n, k), ties to the smaller id, sorted."""
    counts = {}
    for i in rows.flatten().tolist():
        counts[i] = counts.get(i, 0) + 1
    ranked = sorted(counts, key=lambda i: (-counts[i], i))[:rows.shape[1]]
    return torch.tensor(sorted(ranked))
