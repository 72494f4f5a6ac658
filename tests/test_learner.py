"""Behaviours of the three-stage learner on the embedded digits benchmark (tiny ViT, random weights for
speed): what must stay frozen, evaluation without the true task id, cached evaluation equals
recomputation, and the run's outputs."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from norga.config import register
from norga.engine.evaluate import Evaluator
from norga.engine.run import ContinualRun
from norga.engine.stages import StageContext

CONF = str(Path(__file__).resolve().parents[1] / "conf")
FAST = ["logger=none", "progress=false", "backbone.pretrained=false", "train.epochs=2", "tii.epochs=1",
        "tap.epochs=2", "tii.tap.epochs=2", "train.batch_size=16", "train.max_batches=4",
        "eval.max_samples_per_task=24", "tap.samples_per_class_factor=1", "method.prompt_length=2",
        "method.prompt_layers=[0,1]"]


def make_run(tmp_path, overrides=()):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=FAST + list(overrides))
    return ContinualRun(cfg, tmp_path)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_parts_stay_frozen(tmp_path):
    run = make_run(tmp_path)
    learner = run.learner
    backbone = snapshot(learner.backbone)
    run.run_task(0)
    gate_after_0 = learner.prompts.gate_params.detach().clone()
    assert not torch.equal(gate_after_0, torch.ones_like(gate_after_0)), "alpha/tau learn in task 0"
    prompt_0 = learner.prompts.prompts[:, :, 0].detach().clone()
    run.run_task(1)
    prompts = learner.prompts.prompts.detach()
    assert torch.equal(prompts[:, :, 0], prompt_0), "a finished task's prompt changed"
    assert torch.equal(learner.prompts.gate_params.detach(), gate_after_0), "alpha/tau changed after task 0"
    assert not torch.equal(prompts[:, :, 1], prompt_0), "prompt 1 did not train (it starts as a copy of 0)"
    assert all(torch.equal(v, learner.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not any(p.requires_grad for p in learner.backbone.parameters())


def test_evaluation_never_uses_the_true_task_id(tmp_path):
    run = make_run(tmp_path)
    run.run_task(0)
    run.run_task(1)
    run.learner.eval_mode()
    honest = run.evaluator.evaluate(run.learner, 1)

    class WrongLabels(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            x, y = self.inner[i]
            return x, (y + 3) % 10

    bench = run.benchmark
    original = bench.test_set
    bench.test_set = lambda task: WrongLabels(original(task))
    fooled = Evaluator(bench, run.device, 16, cache=True, progress=False, max_samples=24).evaluate(run.learner, 1)
    for a, b in zip(honest.tasks, fooled.tasks):
        assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.predictions, b.predictions)


def test_cached_evaluation_equals_recomputing_everything(tmp_path):
    run = make_run(tmp_path, ["eval.max_samples_per_task=48"])
    recompute = Evaluator(run.benchmark, run.device, 16, cache=False, progress=False, max_samples=48)
    for task in range(3):
        run.run_task(task)
        run.learner.eval_mode()
        cached = run.evaluator.evaluate(run.learner, task)
        direct = recompute.evaluate(run.learner, task)
        assert cached.accs == direct.accs and cached.tii_accs == direct.tii_accs
        for a, b in zip(cached.tasks, direct.tasks):
            assert torch.equal(a.predictions, b.predictions)
    # each test set: one backbone pass + one prompted pass, plus re-runs only for changed prompts
    assert run.evaluator.vit_passes < recompute.vit_passes
    assert recompute.vit_passes == 2 * (1 + 2 + 3)  # two ViTs over every seen test set, every time


def test_larger_prompt_lr_gives_head_a_tenth(tmp_path, monkeypatch):
    run = make_run(tmp_path, ["optimizer.larger_prompt_lr=true", "train.epochs=1"])
    seen = {}
    from norga.methods import hide_prompt

    real = hide_prompt.build_optimizer

    def spy(cfg, groups):
        groups = list(groups)
        seen["groups"] = [(len(p), lr) for p, lr in groups]
        return real(cfg, groups)

    monkeypatch.setattr(hide_prompt, "build_optimizer", spy)
    run.learner.wtp_train(StageContext(0, "wtp_train"))
    (n_prompt, lr_prompt), (n_head, lr_head) = seen["groups"]
    assert n_prompt == 2 and n_head == 2  # prompts + alpha/tau; head weight + bias
    assert lr_prompt == pytest.approx(0.03 * 16 / 256) and lr_head == pytest.approx(lr_prompt * 0.1)


def test_hide_refuses_a_gate(tmp_path):
    with pytest.raises(ValueError, match="method=norga gate=tanh"):
        make_run(tmp_path, ["method=hide", "method.gate=tanh"])


def test_run_writes_metrics_and_checkpoints(tmp_path):
    full = make_run(tmp_path, ["dataset.num_tasks=2"]).run()
    assert full["finished"] and full["num_tasks"] == 2 and len(full["acc_matrix"]) == 2
    assert full["final_avg_acc"] == pytest.approx(sum(full["acc_matrix"][1]) / 2)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["acc_matrix"] == full["acc_matrix"] and on_disk["config"]["seed"] == 42
    for key in ("acc_matrix_pre_tap", "cum_avg_acc", "forgetting", "tii_acc", "vit_passes", "seed"):
        assert key in on_disk
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last.pt", "task_0.pt", "task_1.pt", "tii_stats_task_0.pt", "tii_stats_task_1.pt",
        "wtp_stats_task_0.pt", "wtp_stats_task_1.pt"]


def test_resume_refuses_a_changed_config(tmp_path):
    make_run(tmp_path, ["dataset.num_tasks=2"]).run()
    with pytest.raises(ValueError, match="optimizer.lr"):
        make_run(tmp_path, ["dataset.num_tasks=2", "resume=true", "optimizer.lr=0.1"]).run()


def test_existing_checkpoints_are_not_overwritten_without_resume(tmp_path):
    make_run(tmp_path, ["dataset.num_tasks=2"]).run()
    with pytest.raises(FileExistsError, match="resume=true"):
        make_run(tmp_path, ["dataset.num_tasks=2"]).run()


def test_tii_feature_cache_runs_the_backbone_once_per_task(tmp_path):
    run = make_run(tmp_path, ["tii.feature_cache=true", "tii.epochs=3", "train.max_batches=null"])
    learner = run.learner
    calls = []
    real = learner.backbone_features
    learner.backbone_features = lambda x: calls.append(len(x)) or real(x)
    learner.tii_train(StageContext(0, "tii_train"))
    learner.tii_stats(StageContext(0, "tii_stats"))
    assert sum(calls) == len(run.benchmark.train_set(0)), "one pass over the task's images, reused by statistics"
    assert len(learner.tii_statistics) == 2
