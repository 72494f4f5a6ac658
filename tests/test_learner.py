"""Behaviours of the HiDe-Prompt / NoRGa learner on the learning fixture (``tests/learning.py``): what must
stay frozen, evaluation that follows task identification and never the true task id, cached evaluation equal
to recomputation, the reference layout's batch-by-batch evaluation, and the run's outputs."""

import json

import pytest
import torch
from torch.utils.data import Subset

from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from norga.engine.stages import StageContext
from tests.learning import assert_learns, compose_cfg


def make_run(tmp_path, overrides=()):
    return ContinualRun(compose_cfg(list(overrides)), tmp_path)


@pytest.fixture(scope="module")
def two_tasks(reference_run, tmp_path_factory):
    """The fixture's reference run (``tests/conftest.py``), re-read after each task from its checkpoint into a
    fresh learner, with what the tests below inspect recorded on the way: the learned state after each task
    and, after each task, a cached and a recomputing evaluation."""
    run_dir, metrics, reference = reference_run("norga", with_run=True)
    run = make_run(tmp_path_factory.mktemp("two_tasks"))
    learner = run.learner
    recompute = Evaluator(run.benchmark, run.device, 16, cache=False, progress=False, max_samples=60)
    record = {"metrics": metrics, "reference": reference, "cached": [], "direct": []}
    for task in range(2):
        state = torch.load(run_dir / "checkpoints" / f"task_{task}.pt", map_location="cpu", weights_only=True)
        learner.load_state_dict(state["learner"])
        record[f"prompts_{task}"] = learner.prompts.prompts.detach().clone()
        record[f"gate_{task}"] = learner.prompts.gate_params.detach().clone()
        learner.eval_mode()
        record["cached"].append(run.evaluator.evaluate(learner, task))
        record["direct"].append(recompute.evaluate(learner, task))
        before = run.evaluator.vit_passes
        record["repeated"] = run.evaluator.evaluate(learner, task)  # nothing changed: all from the cache
        record[f"repeat_passes_{task}"] = run.evaluator.vit_passes - before
    record["cached_passes"], record["direct_passes"] = run.evaluator.vit_passes, recompute.vit_passes
    record["prompt_changes"] = run.evaluator.prompt_changes
    return run, record


def test_the_fixture_learns(two_tasks):
    _, record = two_tasks
    assert_learns(record["metrics"])
    # the checkpoints hold what the run evaluated: re-evaluating them gives the run's accuracy matrix
    assert [result.accs for result in record["cached"]] == record["metrics"]["acc_matrix"]


def test_frozen_parts_stay_frozen(two_tasks):
    run, record = two_tasks
    learner = run.learner
    gate_0, gate_1 = record["gate_0"], record["gate_1"]
    assert not torch.equal(gate_0, torch.ones_like(gate_0)), "alpha/tau learn in task 0"
    assert torch.equal(gate_1, gate_0), "alpha/tau changed after task 0"
    prompts_0, prompts_1 = record["prompts_0"], record["prompts_1"]
    assert torch.equal(prompts_1[:, :, 0], prompts_0[:, :, 0]), "a finished task's prompt changed"
    assert not torch.equal(prompts_1[:, :, 1], prompts_0[:, :, 0]), "prompt 1 did not train (starts as a copy of 0)"
    # the backbone the reference run trained with equals a freshly loaded one
    trained = record["reference"].learner.backbone
    fresh = learner.backbone.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in trained.state_dict().items())
    assert not any(p.requires_grad for p in trained.parameters())


def test_cached_evaluation_equals_recomputing_everything(two_tasks):
    _, record = two_tasks
    assert record["prompt_changes"] > 0, "no sample changed prompt: the cache's per-prompt bookkeeping is untested"
    for cached, direct in zip(record["cached"], record["direct"]):
        assert cached.accs == direct.accs and cached.tii_accs == direct.tii_accs
        for a, b in zip(cached.tasks, direct.tasks):
            assert torch.equal(a.selection, b.selection) and torch.equal(a.predictions, b.predictions)
    # the recomputing evaluator runs both ViTs over every seen test set every time
    assert record["direct_passes"] == 2 * (1 + 2)
    assert record["cached_passes"] < record["direct_passes"]
    # evaluating again what was just evaluated runs no ViT at all, and gives the same result
    assert record["repeat_passes_0"] == record["repeat_passes_1"] == 0
    assert record["repeated"].accs == record["cached"][-1].accs


class _Swapped:
    """The benchmark with the test sets of tasks 0 and 1 exchanged (and cut to 40 samples): every sample is
    scored under the other task's index, so the true task index and task identification disagree."""

    def __init__(self, benchmark):
        self._inner = benchmark

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def test_set(self, task):
        return Subset(self._inner.test_set(1 - task), list(range(0, 400, 10)))


@pytest.mark.parametrize("cache", [True, False])
def test_evaluation_follows_task_identification_not_the_true_task(two_tasks, cache):
    run, _ = two_tasks
    learner, bench = run.learner, run.benchmark
    learner.eval_mode()
    swapped = _Swapped(bench)
    result = Evaluator(swapped, run.device, 16, cache=cache, progress=False).evaluate(learner, 1)
    class_to_task = torch.as_tensor(bench.class_to_task)
    for index, score in enumerate(result.tasks):
        x = torch.stack([x for x, _ in swapped.test_set(index)])
        with torch.no_grad():
            tii = learner.tii(learner.backbone_features(x))
            tii = tii.masked_fill(~bench.seen_mask(1), float("-inf"))
            picked = class_to_task[tii.argmax(dim=1)]
            predicted = learner.head(learner.prompted_features(x, picked)).argmax(dim=1)
        assert (picked != index).float().mean() > 0.5, "the fixture must make TII and the task index disagree"
        assert torch.equal(score.selection[:, 0], picked), "the prompt used is not the one TII picked"
        assert torch.equal(score.chosen_task, picked)
        assert torch.equal(score.predictions, predicted)


def test_reference_layout_run_learns_and_evaluates_batch_by_batch(tmp_path):
    """In the reference layout a sample's features depend on its batch, so evaluation must run the test batches
    as they come (never the per-prompt cache); the run still trains and evaluates end to end."""
    run = make_run(tmp_path, ["method.prefix_layout=reference"])
    metrics = run.run()
    assert metrics["final_avg_acc"] > 40, metrics["acc_matrix"]
    assert metrics["vit_passes"] == 2 * (1 + 2) + 2 * (1 + 2), "pre-TAP and final evaluation, both ViTs"
    direct = Evaluator(run.benchmark, run.device, run.cfg.eval.batch_size, cache=False, progress=False,
                       max_samples=60).evaluate(run.learner, 1)
    assert direct.accs == metrics["acc_matrix"][-1]


def test_larger_prompt_lr_gives_head_a_tenth(tmp_path):
    run = make_run(tmp_path, ["optimizer.larger_prompt_lr=true", "train.epochs=1", "train.max_batches=1"])
    ctx = StageContext(0, "wtp_train", seed=42, max_batches=1)
    run.learner.wtp_train(ctx)
    prompt_group, head_group = ctx.optimizer.param_groups
    assert len(prompt_group["params"]) == 2 and len(head_group["params"]) == 2  # prompts + alpha/tau; head w, b
    # scaled by the global batch (32 / 256), as HiDe-Prompt declares for wtp_train; the schedule's reference too
    assert prompt_group["base_lr"] == pytest.approx(0.03 * 32 / 256)
    assert head_group["base_lr"] == pytest.approx(prompt_group["base_lr"] * 0.1)


def test_hide_refuses_a_gate(tmp_path):
    with pytest.raises(ValueError, match="method=norga gate=tanh"):
        make_run(tmp_path, ["method=hide", "method.gate=tanh"])


# what the tests of a run's files check needs no learning
CHEAP = ["train.max_batches=2", "train.max_epochs=1", "train.max_stats_per_class=10"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    return run_dir, make_run(run_dir, CHEAP).run()


def test_run_writes_metrics_and_checkpoints(finished_run):
    run_dir, full = finished_run
    assert full["finished"] and full["num_tasks"] == 2 and len(full["acc_matrix"]) == 2
    assert full["final_avg_acc"] == pytest.approx(sum(full["acc_matrix"][1]) / 2)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["acc_matrix"] == full["acc_matrix"] and on_disk["config"]["seed"] == 42
    for key in ("acc_matrix_pre_tap", "cum_avg_acc", "forgetting", "tii_acc", "vit_passes", "seed"):
        assert key in on_disk
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.pt", "task_0.pt", "task_1.pt", "tii_stats_task_0.pt", "tii_stats_task_1.pt",
        "wtp_stats_task_0.pt", "wtp_stats_task_1.pt"]


def test_resume_refuses_a_changed_config(finished_run):
    run_dir, _ = finished_run
    with pytest.raises(ValueError, match="optimizer.lr"):
        make_run(run_dir, [*CHEAP, "resume=true", "optimizer.lr=0.1"]).run()


def test_existing_checkpoints_are_not_overwritten_without_resume(finished_run):
    run_dir, _ = finished_run
    with pytest.raises(FileExistsError, match="resume=true"):
        make_run(run_dir, CHEAP).run()


def test_tii_feature_cache_runs_the_backbone_once_per_task(tmp_path):
    run = make_run(tmp_path, ["method.tii.feature_cache=true", "method.tii.epochs=3"])
    learner = run.learner
    calls = []
    real = learner.backbone_features
    learner.backbone_features = lambda x: calls.append(len(x)) or real(x)
    learner.tii_train(StageContext(0, "tii_train", seed=42))
    learner.tii_stats(StageContext(0, "tii_stats", seed=42))
    assert sum(calls) == len(run.benchmark.train_set(0)), "one pass over the task's images, reused by statistics"
    assert len(learner.tii_statistics) == 5


def test_reference_layout_statistics_use_the_references_per_class_shuffled_batches(tmp_path):
    """In the reference layout a sample's statistics feature depends on its batch (the first half of a batch gets
    (key, key) prefixes, the second (value, value)), so the statistics are computed from the reference's batches:
    one shuffled loader per class of the task, batches of train.batch_size, the last one partial."""
    run = make_run(tmp_path, ["method.prefix_layout=reference"])
    learner = run.learner
    seen = []
    real = learner.extract_all

    def spy(fn, loader, desc):
        sampler = loader.batch_sampler
        seen.append((loader.dataset.labels.unique().tolist(), sampler.shuffle, sampler.batch_size))
        return real(fn, loader, desc)

    learner.extract_all = spy
    learner.wtp_stats(StageContext(0, "wtp_stats", seed=42))
    classes = run.benchmark.task_classes[0]
    assert seen == [([c], True, 32) for c in classes]
    assert sorted(learner.wtp_statistics.means) == sorted(classes)
    seen.clear()
    per_sample = make_run(tmp_path / "p").learner
    per_sample.extract_all = spy
    per_sample.wtp_stats(StageContext(0, "wtp_stats", seed=42))
    assert seen == [(sorted(classes), False, 32)], "per-sample prefixes: one pass in dataset order"
