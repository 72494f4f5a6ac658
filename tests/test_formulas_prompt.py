"""The training loss of every prompt method, written out from docs/algorithm.md and computed independently on
the embedded tiny ViT with random learned values and a batch of real images, every coefficient set to a
distinctive value (neither 0 nor 1), against what the learner optimises (``Learner.benchmark_step``, the
loss its training stage uses). Also where the prompts go: each block in ``method.prompt_layers`` (and
DualPrompt's ``method.g_prompt_layers``) takes a prefix, every other block runs exactly as the plain ViT."""

import pytest
import torch
import torch.nn.functional as F

from norga.engine.run import ContinualRun
from norga.engine.stages import StageContext
from norga.models.vit import vit_features
from tests.learning import compose_cfg


def build(tmp_path, method, overrides=()):
    run = ContinualRun(compose_cfg([f"method={method}", *overrides]), tmp_path)
    return run.learner


def randomise(learner, seed=0):
    """Random learned values (uniform(-1, 1)), so no term vanishes on an untrained zero or a symmetric init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in learner.modules().values():
            for p in module.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)


def batch(learner, task, n=6):
    """``n`` training images of ``task`` (evaluation transform) spread over its classes, and their labels."""
    data = learner.benchmark.train_set(task, augment=False)
    picks = [data[i] for i in range(0, len(data), len(data) // n)][:n]
    return torch.stack([x for x, _ in picks]), torch.tensor([int(y) for _, y in picks])


def masked_ce(logits, y, classes):
    """Cross-entropy with the logits of every class outside ``classes`` at -inf."""
    allowed = torch.zeros(logits.shape[1], dtype=torch.bool)
    allowed[list(classes)] = True
    return F.cross_entropy(logits.masked_fill(~allowed, float("-inf")), y)


def cos(a, b):
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


# ---- HiDe-Prompt / NoRGa: WTP ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["norga", "hide"])
def test_wtp_loss_is_masked_cross_entropy_plus_reg_times_the_contrastive_term(method, tmp_path):
    # a large temperature: the features of a LayerNorm-ed ViT have norm ~ sqrt(d), so at 0.8 the term is ~0
    reg, temperature, momentum = 0.37, 23.0, 0.29
    overrides = [f"method.reg={reg}", f"method.contrastive_temperature={temperature}",
                 f"method.prompt_momentum={momentum}"] + (["gate=tanh"] if method == "norga" else [])
    learner = build(tmp_path, method, overrides)
    randomise(learner)
    task, classes = 1, learner.benchmark.task_classes[1]
    # stored WTP statistics of task 0's classes: their means are the constants of the contrastive term
    gen = torch.Generator().manual_seed(1)
    stored = torch.randn(4 * len(learner.benchmark.task_classes[0]), learner.head.in_features, generator=gen)
    stored_labels = torch.tensor(learner.benchmark.task_classes[0]).repeat(4)
    learner.wtp_statistics.fit(stored, stored_labels)
    x, y = batch(learner, task)
    loss_fn, params = learner.benchmark_step(task)
    got = loss_fn(x, y)

    # P = (1 - m) P_1 + m mean(P_0): the prompt the batch uses; z its features, mu the stored class means
    with torch.no_grad():
        prompts = learner.prompts.prompts
        prompts[:, :, 1] = (1 - momentum) * prompts[:, :, 1] + momentum * prompts[:, :, 0]
        z = learner.prompted_features(x, torch.full((len(x),), 1))
        ce = masked_ce(learner.head(z), y, classes)
        mu = torch.stack([stored[stored_labels == c].mean(0) for c in learner.benchmark.task_classes[0]])
        m = torch.cat([mu, z])
        contrastive = F.cross_entropy(m @ m.T / temperature, torch.arange(len(m)))
    assert torch.allclose(got, ce + reg * contrastive, rtol=1e-5, atol=1e-5), (got, ce, contrastive)
    assert (reg * contrastive).abs() > 1e-3, "the contrastive term must matter in this check"


def test_tii_loss_is_the_masked_cross_entropy_of_the_tii_logits(tmp_path):
    """One plain SGD step of the TII stage over the whole task (one batch: the order of the samples does not
    matter) moves the TII model by -lr times the gradient of the formula, at lr = method.tii.lr x B / 256."""
    lr, size = 0.37, 256
    learner = build(tmp_path, "hide", ["optimizer=sgd", "optimizer.partial.momentum=0.0", f"method.tii.lr={lr}",
                                       "method.tii.epochs=1", "method.tii.clip_grad=null", f"train.batch_size={size}",
                                       "method.tii.feature_cache=true"])
    randomise(learner)
    task = 1
    data = learner.benchmark.train_set(task, augment=False)
    assert len(data) <= size
    before = [p.detach().clone() for p in learner.tii.parameters()]
    learner.tii_train(StageContext(task=task, stage="tii_train", seed=learner.cfg.seed, progress=False))
    trained = [p.detach().clone() for p in learner.tii.parameters()]
    with torch.no_grad():
        for p, b in zip(learner.tii.parameters(), before):
            p.copy_(b)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    learner.tii.zero_grad()
    masked_ce(learner.tii(vit_features(learner.backbone, x)), y, learner.benchmark.task_classes[task]).backward()
    for p, b, t in zip(learner.tii.parameters(), before, trained):
        assert torch.allclose(t, b - lr * size / 256 * p.grad, atol=1e-5), "the TII step is not -lr x gradient"
    assert all(p.grad.abs().max() > 0 for p in learner.tii.parameters())


# ---- L2P, DualPrompt, S-Prompt++: cross-entropy minus pull_coeff times the pull ------------------------------
def test_l2p_loss_is_cross_entropy_minus_pull_coeff_times_the_pull(tmp_path):
    pull_coeff = 0.37
    learner = build(tmp_path, "l2p", [f"method.pull_coeff={pull_coeff}"])
    randomise(learner)
    task, top_k = 1, learner.top_k
    x, y = batch(learner, task)
    got = learner.benchmark_step(task)[0](x, y)
    with torch.no_grad():
        q = vit_features(learner.backbone, x)
        sim = cos(q, learner.keys.vectors)
        # the batch's most frequent top-k matches (ties: smaller ids) for every image
        counts = torch.bincount(sim.topk(top_k, dim=1).indices.flatten(), minlength=len(sim[0]))
        ids = sorted(sorted(range(len(counts)), key=lambda i: (-int(counts[i]), i))[:top_k])
        chosen = torch.tensor(ids).expand(len(x), -1)
        ce = masked_ce(learner.head(learner.prompted_features(x, chosen)), y, learner.benchmark.task_classes[task])
        pull = sim[:, ids].sum(dim=1).mean()
    assert torch.allclose(got, ce - pull_coeff * pull, rtol=1e-5, atol=1e-5), (got, ce, pull)
    assert (pull_coeff * pull).abs() > 1e-2


@pytest.mark.parametrize("method", ["dualprompt", "sprompt"])
def test_masked_prompt_loss_is_cross_entropy_minus_pull_coeff_times_the_task_keys_pull(method, tmp_path):
    pull_coeff = 0.37
    learner = build(tmp_path, method, [f"method.pull_coeff={pull_coeff}"])
    randomise(learner)
    task = 1
    x, y = batch(learner, task)
    got = learner.benchmark_step(task)[0](x, y)
    with torch.no_grad():
        q = vit_features(learner.backbone, x)
        slot = torch.full((len(x), 1), task)  # the prompt mask: task t trains slot t
        ce = masked_ce(learner.head(learner.prompted_features(x, slot)), y, learner.benchmark.task_classes[task])
        pull = cos(q, learner.keys.vectors)[:, task].mean()
    assert torch.allclose(got, ce - pull_coeff * pull, rtol=1e-5, atol=1e-5), (got, ce, pull)
    assert (pull_coeff * pull).abs() > 1e-2


# ---- CODA-Prompt: cross-entropy plus ortho_weight times the orthogonality penalty ------------------------------
def test_coda_loss_is_cross_entropy_plus_ortho_weight_times_the_orthogonality_penalty(tmp_path):
    mu = 0.37
    learner = build(tmp_path, "coda", [f"method.ortho_weight={mu}"])
    gen = torch.Generator().manual_seed(0)
    learner.prompt.start_task(0, gen)
    learner.prompt.start_task(1, gen)
    randomise(learner)  # rows far from orthonormal: the penalty is large
    task = 1
    x, y = batch(learner, task)
    got = learner.benchmark_step(task)[0](x, y)
    used = 2 * learner.prompt.per_task  # the rows of tasks 0 and 1
    with torch.no_grad():
        q = vit_features(learner.backbone, x)
        ce = masked_ce(learner.head(learner.prompted_features(x, q, task)), y, learner.benchmark.task_classes[task])

        def penalty(rows):
            return ((rows @ rows.T - torch.eye(len(rows))) ** 2).mean()

        p = learner.prompt
        omega = sum(penalty(p.keys[i, :used]) + penalty(p.attention[i, :used])
                    + penalty(p.components[i, :used].flatten(1)) for i in range(len(p.layers)))
    assert torch.allclose(got, ce + mu * omega, rtol=1e-5, atol=1e-4), (got, ce, omega)


# ---- where the prompts go ------------------------------------------------------------------------------------
def prefixed_blocks(learner, x, ids):
    """The blocks whose output differs from the plain block's on the same input in a prompted forward."""
    records = []
    hooks = [block.register_forward_hook(lambda m, args, out, i=i: records.append((i, args[0], out)))
             for i, block in enumerate(learner.backbone.blocks)]
    try:
        with torch.no_grad():
            learner.prompted_features(x, ids)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        return {i for i, inp, out in records if not torch.allclose(learner.backbone.blocks[i](inp), out, atol=1e-6)}


@pytest.mark.parametrize(("method", "overrides", "expected"), [
    ("sprompt", ["method.prompt_layers=[1,3]"], {1, 3}),
    ("dualprompt", ["method.g_prompt_layers=[0]", "method.prompt_layers=[2,4]"], {0, 2, 4}),
    ("dualprompt", ["method.g_prompt_layers=[]", "method.prompt_layers=[3,5]"], {3, 5}),
])
def test_prompts_enter_exactly_the_configured_blocks(method, overrides, expected, tmp_path):
    learner = build(tmp_path, method, overrides)
    randomise(learner)
    x, _ = batch(learner, 0, n=2)
    for slot in (0, 1):
        assert prefixed_blocks(learner, x, torch.full((len(x), 1), slot)) == expected


# ---- HiDe-Prompt / NoRGa: TAP -------------------------------------------------------------------------------
def test_wtp_tap_trains_the_head_on_seen_classes_with_k_steps_of_n_samples_per_epoch(tmp_path):
    """Per epoch K steps (K = classes of the earlier tasks), each on n = samples_per_class_factor x B samples
    drawn from the stored Gaussians of the seen classes; logits of unseen classes masked out (their head rows
    never move); only the head trains."""
    factor, batch_size, epochs = 3, 8, 2
    learner = build(tmp_path, "hide", ["dataset.num_tasks=5", f"method.tap.samples_per_class_factor={factor}",
                                       f"train.batch_size={batch_size}", f"method.tap.epochs={epochs}",
                                       "method.tap.lr=0.37"])
    randomise(learner)
    bench, task = learner.benchmark, 1
    seen = [c for t in range(task + 1) for c in bench.task_classes[t]]
    gen = torch.Generator().manual_seed(2)
    labels = torch.tensor(seen).repeat_interleave(6)
    learner.wtp_statistics.fit(torch.randn(len(labels), learner.head.in_features, generator=gen), labels)
    head_before = {k: v.clone() for k, v in learner.head.state_dict().items()}
    prompts_before = learner.prompts.prompts.detach().clone()
    batches = []
    hook = learner.head.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        learner.wtp_tap(StageContext(task=task, stage="wtp_tap", seed=learner.cfg.seed, progress=False))
    finally:
        hook.remove()
    k = len(bench.task_classes[0])
    assert batches == [factor * batch_size] * (k * epochs)
    weight, before = learner.head.state_dict()["weight"], head_before["weight"]
    unseen = sorted(set(range(bench.num_classes)) - set(seen))
    assert torch.equal(weight[unseen], before[unseen]), "head rows of unseen classes moved: logits not masked"
    assert all(not torch.equal(weight[c], before[c]) for c in seen)
    assert torch.equal(learner.prompts.prompts, prompts_before), "TAP trains the head only"
