"""L2P, DualPrompt and S-Prompt++ as the reference runs them (docs/algorithm.md#baselines): key-query selection
and the pull term follow their formulas; predictions do not depend on the rest of the batch by default; the
reference switches reproduce the reference's behaviour; what finished tasks trained stays bit-identical; bad
settings fail with the key and the valid values."""

import pytest
import torch
from torch.nn import functional as F

from norga.engine.evaluate import batchwise_majority, majority_selection
from norga.engine.run import ContinualRun
from norga.models.keys import PromptKeys
from norga.models.prompts import PromptPool
from norga.runner import start
from tests.learning import compose_cfg

BASELINES = ["l2p", "dualprompt", "sprompt"]


def build(tmp_path, method, overrides=()):
    return ContinualRun(compose_cfg([f"method={method}", *overrides]), tmp_path)


def perturb(learner, seed=0):
    """Random learned values, so that no test passes on untrained zeros or identical prompts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in learner.modules().values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


def test_selection_is_cosine_top_k_and_the_pull_is_the_summed_cosine():
    torch.manual_seed(0)
    keys = PromptKeys(pool_size=6, dim=4)
    query = torch.randn(3, 4)
    cos = torch.stack([torch.stack([F.cosine_similarity(q, k, dim=0) for k in keys.vectors]) for q in query])
    ids = keys.match(query, top_k=2)
    assert torch.equal(ids, cos.topk(2, dim=1).indices.sort(dim=1).values)
    assert torch.equal(keys.match(query, top_k=1, allowed=3), cos[:, :3].argmax(dim=1, keepdim=True))
    pull = keys.pull(query.requires_grad_(), ids)
    expected = torch.stack([cos[b, ids[b]].sum() for b in range(3)])
    assert torch.allclose(pull, expected, atol=1e-6)
    pull.sum().backward()
    assert query.grad is None, "the query is the frozen backbone's: no gradient"
    untouched = sorted(set(range(6)) - set(ids.flatten().tolist()))
    assert torch.all(keys.vectors.grad[untouched] == 0) and keys.vectors.grad.abs().sum() > 0


def test_majority_selection_counts_every_pick_and_breaks_ties_towards_smaller_ids():
    picks = torch.tensor([[1, 4], [4, 5], [2, 4], [1, 5]])  # counts: 4 x3, 1 x2, 5 x2, 2 x1
    assert majority_selection(picks).tolist() == [1, 4]  # 1 and 5 tie: the smaller id wins
    assert majority_selection(torch.tensor([[3], [0], [3], [0]])).tolist() == [0]
    # each consecutive test batch of 2 votes on its own
    assert batchwise_majority(torch.tensor([[2], [2], [1], [0]]), 2).flatten().tolist() == [2, 2, 0, 0]


def test_top_k_prefixes_in_the_reference_layout_mix_as_the_reshape_does():
    """The reference gathers (layers, 2, B, k, L, H, D) and reshapes to (layers, B, 2, k L, H, D): output sample
    b, slot d (0 key, 1 value) holds half (2b+d) // B of the prompts selected by sample (2b+d) % B."""
    torch.manual_seed(0)
    pool = PromptPool([0], num_tasks=5, length=2, num_heads=1, head_dim=3, layout="reference")
    ids = torch.tensor([[0, 3], [1, 2], [4, 0]])
    B = len(ids)
    prefixes = pool.prefixes_for_ids(ids)[0]
    for b in range(B):
        for d, got in ((0, prefixes.key[b]), (1, prefixes.value[b])):
            src, half = (2 * b + d) % B, (2 * b + d) // B
            expected = torch.cat([pool.prompts[0, half, j] for j in ids[src].tolist()])  # (k L, H, D)
            assert torch.equal(got, expected.transpose(0, 1)), (b, d)
    correct = PromptPool([0], num_tasks=5, length=2, num_heads=1, head_dim=3)
    correct.load_state_dict(pool.state_dict())
    good = correct.prefixes_for_ids(ids)[0]
    for b in range(B):
        assert torch.equal(good.key[b], torch.cat([pool.prompts[0, 0, j] for j in ids[b]]).transpose(0, 1))
        assert torch.equal(good.value[b], torch.cat([pool.prompts[0, 1, j] for j in ids[b]]).transpose(0, 1))


@pytest.mark.parametrize("method", BASELINES)
def test_predictions_do_not_depend_on_the_rest_of_the_batch(method, tmp_path):
    learner = build(tmp_path, method).learner
    perturb(learner)
    learner.eval_mode()
    x = torch.stack([learner.benchmark.test_set(t)[i][0] for t in (0, 1) for i in range(4)])

    def predict(batch):
        with torch.no_grad():
            query = learner.query(batch)
            selection = learner.select(query, 1)
            return learner.logits(learner.features(batch, selection, query), 1)

    together = predict(x)
    alone = torch.cat([predict(x[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(together, alone, atol=1e-5)
    assert len(torch.unique(learner.select(learner.query(x), 1), dim=0)) > 1, "samples should pick differently"


def states_after_each_task(reference_run, method):
    run_dir, metrics = reference_run(method)
    return [torch.load(run_dir / "checkpoints" / f"task_{t}.pt", weights_only=True)["learner"] for t in (0, 1)], \
        metrics


@pytest.mark.parametrize("method", ["dualprompt", "sprompt"])
def test_finished_tasks_prompts_keys_and_head_rows_stay_bit_identical(method, reference_run, tmp_path):
    (after_0, after_1), _ = states_after_each_task(reference_run, method)
    old = build(tmp_path, method).benchmark.task_classes[0]
    prompts_0, prompts_1 = after_0["prompts"]["prompts"], after_1["prompts"]["prompts"]
    keys_0, keys_1 = after_0["prompt_keys"]["vectors"], after_1["prompt_keys"]["vectors"]
    assert torch.equal(prompts_1[:, :, 0], prompts_0[:, :, 0])
    assert torch.equal(keys_1[0], keys_0[0])
    for name in ("weight", "bias"):
        assert torch.equal(after_1["head"][name][old], after_0["head"][name][old])
    assert not torch.equal(prompts_1[:, :, 1], prompts_0[:, :, 0]), "prompt 1 (a copy of prompt 0) trained"
    assert not torch.equal(keys_1[1], keys_0[1]), "key 1 was pulled"
    if "g_prompt" in after_0:
        assert not torch.equal(after_1["g_prompt"]["prompts"], after_0["g_prompt"]["prompts"]), \
            "the G-prompt trains on every task"


@pytest.mark.xdist_group("reference_l2p")
def test_l2p_head_rows_of_finished_tasks_stay_bit_identical(reference_run, tmp_path):
    (after_0, after_1), _ = states_after_each_task(reference_run, "l2p")
    old = build(tmp_path, "l2p").benchmark.task_classes[0]
    assert torch.equal(after_1["head"]["weight"][old], after_0["head"]["weight"][old])
    assert not torch.equal(after_1["head"]["weight"], after_0["head"]["weight"])


def test_dualprompt_task_prompt_starts_as_a_copy_and_keys_are_not_copied(tmp_path):
    run = build(tmp_path, "dualprompt")
    learner = run.learner
    key_1 = learner.keys.vectors[1].detach().clone()
    # the schema refuses train.epochs=0 on the command line; set after validation, it leaves only the copy
    run.cfg.train.epochs = 0
    run.run_task(0)
    run.run_task(1)
    assert torch.equal(learner.prompts.prompts[:, :, 1], learner.prompts.prompts[:, :, 0])
    assert torch.equal(learner.keys.vectors[1], key_1)


def test_l2p_trains_the_whole_batch_on_its_most_frequent_matches(tmp_path):
    learner = build(tmp_path, "l2p").learner
    perturb(learner)
    query = torch.randn(16, learner.dim)
    selection = learner.train_selection(query, 0)
    matches = learner.keys.match(query, learner.top_k)
    assert torch.equal(selection, majority_selection(matches).expand(16, -1))
    per_sample = build(tmp_path / "b", "l2p", ["method.train_batchwise=false"]).learner
    per_sample.load_state_dict(learner.state_dict())
    assert torch.equal(per_sample.train_selection(query, 0), matches)


def test_prompt_mask_trains_the_task_slots_and_names_the_task(tmp_path):
    learner = build(tmp_path, "dualprompt").learner
    assert learner.train_selection(torch.randn(3, learner.dim), 1).tolist() == [[1], [1], [1]]
    assert learner.selected_task(torch.tensor([[0], [1]])).tolist() == [0, 1]
    assert build(tmp_path / "l", "l2p").learner.selected_task(torch.tensor([[0, 1]])) is None


def test_first_task_only_schedule_reproduces_the_reference_defect(tmp_path):
    learner = build(tmp_path, "dualprompt", ["scheduler=step", "scheduler.first_task_only=true"]).learner
    assert learner.schedule(0)["name"] == "step" and learner.schedule(1) == {"name": "constant"}
    correct = build(tmp_path / "c", "dualprompt", ["scheduler=step"]).learner
    assert correct.schedule(1)["name"] == "step"


def test_reference_layout_is_evaluated_batch_by_batch(tmp_path):
    assert not build(tmp_path, "dualprompt", ["method.prefix_layout=reference"]).learner.eval_cacheable
    assert build(tmp_path / "d", "dualprompt").learner.eval_cacheable


def test_reference_layout_keeps_the_similarity_order_of_a_top_2_selection(tmp_path):
    """The reference keeps torch.topk's order (best key first) and, for a batch majority, the count order; its
    batch-mixing reshape pairs key and value halves by position, so there the order changes the features. The
    per-sample layout's prefix attention is a softmax over all prefix columns: order-free, so it stays sorted."""
    top2 = ["method.top_k=2", "method.prompt_mask=false", "method.pool_size=6", "method.g_prompt_layers=[]"]
    reference = build(tmp_path, "dualprompt", [*top2, "method.prefix_layout=reference"]).learner
    per_sample = build(tmp_path / "p", "dualprompt", top2).learner
    perturb(reference)
    per_sample.load_state_dict(reference.state_dict())
    x = torch.stack([reference.benchmark.test_set(0)[i][0] for i in range(6)])
    with torch.no_grad():
        query = reference.query(x)
        cos = F.normalize(query, dim=1) @ F.normalize(reference.keys.vectors, dim=1).T
        best_first = cos.topk(2, dim=1).indices
        assert (best_first[:, 0] > best_first[:, 1]).any(), "some sample must prefer its larger id"
        assert reference.ordered_selection and not per_sample.ordered_selection
        assert torch.equal(reference.select(query, 1), best_first)
        assert torch.equal(per_sample.select(query, 1), best_first.sort(dim=1).values)
        # sorting reorders some rows only: the reshape then pairs other key and value halves
        ascending = best_first.sort(dim=1).values
        assert not torch.allclose(reference.features(x, best_first, query), reference.features(x, ascending, query),
                                  atol=1e-4), "in the reference layout the order decides the features"
        assert torch.allclose(per_sample.features(x, best_first, query), per_sample.features(x, ascending, query),
                              atol=1e-5), "per sample, the order of the prefixes does not matter"
    picks = torch.tensor([[4, 1], [5, 4], [4, 2], [1, 5]])  # counts: 4 x3, 1 x2, 5 x2, 2 x1
    assert majority_selection(picks, ordered=True).tolist() == [4, 1]  # most frequent first
    assert majority_selection(picks).tolist() == [1, 4]
    assert batchwise_majority(picks, 4, ordered=True)[0].tolist() == [4, 1]


@pytest.mark.parametrize(("method", "overrides", "message"), [
    ("l2p", ["gate=tanh"], "method=l2p takes no gate"),
    ("dualprompt", ["method.gate=sigmoid"], "method=norga gate=sigmoid"),
    ("l2p", ["method.top_k=7"], r"method.top_k: 7 is larger than the pool \(method.pool_size=6\)"),
    ("l2p", ["method.prompt_layers=[0,9]"], r"method.prompt_layers \[0, 9\] has \[9\] outside the backbone's 6 "
                                            r"blocks \(0..5\)"),
    ("dualprompt", ["method.g_prompt_layers=[1]"], r"blocks \[1\] are in both method.g_prompt_layers"),
    ("sprompt", ["method.pool_size=1"], "1 is too small for method.prompt_mask=true, which trains prompts"),
])
def test_bad_settings_name_the_key(method, overrides, message, tmp_path):
    # as a run starts (norga.runner): the config's own rules first, then what only the built model can check
    with pytest.raises(ValueError, match=message):
        start(compose_cfg([f"method={method}", *overrides]), tmp_path)


def test_match_seen_keys_restricts_selection_to_seen_tasks(tmp_path):
    seen_only = build(tmp_path, "dualprompt", ["method.match_seen_keys=true"]).learner
    every_key = build(tmp_path / "all", "dualprompt").learner
    perturb(every_key)
    seen_only.load_state_dict(every_key.state_dict())
    query = torch.randn(32, every_key.dim)
    assert set(every_key.select(query, 0).flatten().tolist()) == {0, 1}, "untrained keys match too (reference)"
    assert set(seen_only.select(query, 0).flatten().tolist()) == {0}
    assert torch.equal(seen_only.select(query, 1), every_key.select(query, 1))
