"""SimpleCIL's and RanPAC's scores written out from docs/algorithm.md and recomputed independently from the
learning fixture's finished runs (``reference_run``): class statistics from the training images with the
evaluation transform (no augmentation) in dataset order, SimpleCIL's prototypes and cosine logits over the
seen classes, RanPAC's unscaled N(0, 1) projection, its ReLU, its ridge head over G and Q of every task so
far, and its linear logits."""

import pytest
import torch
import torch.nn.functional as F


def eval_transform_images(learner, task):
    """Task ``task``'s training images with the evaluation transform, in dataset order, keeping the first
    ``train.max_stats_per_class`` of each class (the fixture's cap), and their labels."""
    data = learner.benchmark.train_set(task, augment=False)
    cap = learner.cfg.train.max_stats_per_class
    keep, count = [], {}
    for i in range(len(data)):
        label = int(data.labels[i])
        if cap is None or count.get(label, 0) < cap:
            keep.append(i)
            count[label] = count.get(label, 0) + 1
    return torch.stack([data[i][0] for i in keep]), torch.tensor([int(data.labels[i]) for i in keep])


def seen_mask(learner, upto_task):
    seen = torch.zeros(learner.benchmark.num_classes, dtype=torch.bool)
    for task in range(upto_task + 1):
        seen[learner.benchmark.task_classes[task]] = True
    return seen


@pytest.mark.xdist_group("reference_simplecil")
def test_simplecil_prototypes_are_class_means_of_unaugmented_features_and_logits_their_cosine(reference_run):
    _, metrics, run = reference_run("simplecil", with_run=True)
    learner = run.learner
    prototypes = learner.head.prototypes
    for task in range(len(metrics["acc_matrix"])):
        x, y = eval_transform_images(learner, task)
        with torch.no_grad():
            f = learner.query(x)
        for c in learner.benchmark.task_classes[task]:
            assert torch.allclose(prototypes[c], f[y == c].double().mean(0).float(), atol=1e-6), f"class {c}"
    f = torch.randn(5, prototypes.shape[1], generator=torch.Generator().manual_seed(0))
    seen = seen_mask(learner, 0)
    expected = (F.normalize(f, dim=1) @ F.normalize(prototypes, dim=1).T).masked_fill(~seen, float("-inf"))
    with torch.no_grad():
        got = learner.logits(f, 0)
    assert torch.equal(torch.isinf(got), ~seen.expand_as(got))
    assert torch.allclose(got[:, seen], expected[:, seen], atol=1e-6)


@pytest.fixture(scope="module")
def ranpac(reference_run):
    run_dir, metrics, run = reference_run("ranpac", with_run=True)
    return run_dir, len(metrics["acc_matrix"]), run.learner


@pytest.mark.xdist_group("reference_ranpac")
def test_ranpac_statistics_come_from_unaugmented_images_in_dataset_order(ranpac):
    run_dir, tasks, learner = ranpac
    for task in range(tasks):
        saved = torch.load(run_dir / "checkpoints" / f"ranpac_task_{task}.pt", map_location="cpu", weights_only=True)
        x, y = eval_transform_images(learner, task)
        with torch.no_grad():
            f = learner.query(x)  # through the adapters, trained in task 0 and frozen since
        assert torch.equal(saved["labels"], y)
        assert torch.allclose(saved["features"], f, atol=1e-5)


@pytest.mark.xdist_group("reference_ranpac")
def test_ranpac_head_is_the_ridge_solution_over_relu_projected_features(ranpac):
    run_dir, tasks, learner = ranpac
    w = learner.head.projection
    d, m = w.shape
    assert (d, m) == (learner.backbone.embed_dim, learner.cfg.method.projection_dim)
    assert abs(w.mean().item()) < 0.03 and abs(w.std().item() - 1) < 0.03, "W ~ N(0, 1), not scaled"
    feats, labels = zip(*[(s["features"], s["labels"]) for s in (
        torch.load(run_dir / "checkpoints" / f"ranpac_task_{t}.pt", map_location="cpu", weights_only=True)
        for t in range(tasks))])
    h = torch.relu(torch.cat(feats).double() @ w.double())  # h = ReLU(f W)
    y = F.one_hot(torch.cat(labels), learner.benchmark.num_classes).double()
    lam = float(learner.head.ridges[tasks - 1])
    assert lam in learner.grid
    w_o = torch.linalg.solve(h.T @ h + lam * torch.eye(m, dtype=torch.float64), h.T @ y).T  # (C, M)
    weight = learner.head.weight.double()
    assert (weight - w_o).norm() <= 1e-4 * w_o.norm(), "W_o is not (G + lambda I)^-1 Q over all tasks so far"
    # logits = h W_o^T over the seen classes
    f = torch.cat(feats)[:7]
    with torch.no_grad():
        got = learner.logits(f, tasks - 1).double()
    expected = torch.relu(f.double() @ w.double()) @ weight.T
    seen = seen_mask(learner, tasks - 1)
    assert torch.allclose(got[:, seen], expected[:, seen], rtol=1e-4, atol=1e-4)
    assert (expected[:, seen].abs() > 1e-3).any()
