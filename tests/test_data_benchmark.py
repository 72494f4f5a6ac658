"""Benchmark: classes into tasks by the seed; per-task datasets of (tensor, dataset class id)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from norga.data import Benchmark, build_benchmark, load_cifar100, load_digits
from tests.fake_datasets import make_cifar100, make_cub, make_imagenet_r

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    make_cifar100(root, n_per_class=2, num_classes=100, n_test_per_class=1)
    return load_cifar100(str(root))


def test_class_order_follows_seed(cifar):
    a = Benchmark(cifar, num_tasks=10, seed=1, shuffle=True, input_size=32)
    b = Benchmark(cifar, num_tasks=10, seed=1, shuffle=True, input_size=32)
    c = Benchmark(cifar, num_tasks=10, seed=2, shuffle=True, input_size=32)
    assert a.class_order == b.class_order and a.task_classes == b.task_classes
    assert a.class_order != c.class_order
    # the reference: random.seed(seed); random.shuffle(list(range(C))); for seed 42 it starts 42, 41, 91, ...
    assert Benchmark(cifar, num_tasks=10, seed=42, shuffle=True, input_size=32).class_order[:6] == [42, 41, 91, 9,
                                                                                                  65, 50]
    assert sorted(a.class_order) == list(range(100))
    plain = Benchmark(cifar, num_tasks=10, seed=1, shuffle=False, input_size=32)
    assert plain.class_order == list(range(100))
    assert plain.task_classes[3] == list(range(30, 40))


def test_pilot_class_order_is_numpy_1993_whatever_the_seed(cifar):
    """SimpleCIL's and RanPAC's authors (the PILOT family) order the classes by np.random.seed(1993);
    np.random.permutation(C): for C = 100 it starts 68, 56, 78, 8, 23, 84 (their logged orders)."""
    orders = [Benchmark(cifar, num_tasks=10, seed=s, shuffle=True, input_size=32, class_order="numpy_1993")
              for s in (40, 42)]
    assert orders[0].class_order == orders[1].class_order
    assert orders[0].class_order[:12] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89]
    assert Benchmark(cifar, num_tasks=10, seed=1, shuffle=False, input_size=32,
                     class_order="numpy_1993").class_order == list(range(100))
    with pytest.raises(ValueError, match="dataset.class_order must be seeded or numpy_1993"):
        Benchmark(cifar, num_tasks=10, seed=1, input_size=32, class_order="numpy")


def test_transform_as_gives_cifar_images_another_family(cifar):
    """{cifar100: default}: CIFAR images get the ImageNet-R family (no normalisation: pixels stay in [0, 1]),
    as SimpleCIL's and RanPAC's authors; an unknown kind is refused with the known ones."""
    plain = Benchmark(cifar, num_tasks=10, seed=1, input_size=32)
    as_default = Benchmark(cifar, num_tasks=10, seed=1, input_size=32, transform_as={"cifar100": "default"})
    x_plain, x_default = plain.test_set(0)[0][0], as_default.test_set(0)[0][0]
    assert x_plain.min() < 0 and 0 <= x_default.min() and x_default.max() <= 1
    with pytest.raises(ValueError, match=r"unknown transform kinds \['imagenet'\]; known kinds: cifar100, default"):
        Benchmark(cifar, num_tasks=10, seed=1, input_size=32, transform_as={"cifar100": "imagenet"})


def test_tasks_equal_disjoint_and_consistent(cifar):
    bench = Benchmark(cifar, num_tasks=10, seed=0, shuffle=True, input_size=32)
    assert (bench.num_classes, bench.num_tasks) == (100, 10)
    assert all(len(cs) == 10 for cs in bench.task_classes)
    assert sorted(c for cs in bench.task_classes for c in cs) == list(range(100))
    for t, cs in enumerate(bench.task_classes):
        assert all(bench.class_to_task[c] == t for c in cs)
        mask = bench.class_mask(t)
        assert mask.dtype == torch.bool and mask.shape == (100,)
        assert sorted(torch.nonzero(mask).flatten().tolist()) == sorted(cs)
        seen = bench.seen_mask(t)
        assert seen.dtype == torch.bool and int(seen.sum()) == 10 * (t + 1)
        assert sorted(torch.nonzero(seen).flatten().tolist()) == sorted(bench.seen_classes(t))


def test_subsets_hold_only_their_tasks_classes(cifar):
    bench = Benchmark(cifar, num_tasks=10, seed=5, shuffle=True, input_size=32)
    for t in (0, 9):
        classes = set(bench.task_classes[t])
        train, test = bench.train_set(t), bench.test_set(t)
        assert len(train) == 20 and len(test) == 10
        assert set(train.labels.tolist()) == classes and set(test.labels.tolist()) == classes
        assert train.labels.dtype == torch.int64
        np.testing.assert_array_equal(cifar.train.labels[train.indices], train.labels.numpy())
        x, y = train[3]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y == int(train.labels[3]) and y in classes  # dataset class id, not remapped


def test_items_follow_their_source_index_under_the_eval_transform(digits):
    bench = Benchmark(digits, num_tasks=5, seed=0, shuffle=True, input_size=16)
    ds = bench.train_set(1, augment=False)
    x, y = ds[4]
    assert y == int(digits.train.labels[int(ds.indices[4])])
    x_again, _ = ds[4]
    assert torch.equal(x, x_again)  # augment=False: the deterministic eval transform
    one_class = bench.train_set_of_classes([bench.task_classes[1][0]], augment=False)
    assert set(one_class.labels.tolist()) == {bench.task_classes[1][0]}


def test_datasets_work_in_worker_processes(digits):
    stats = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    bench = Benchmark(digits, num_tasks=5, seed=0, shuffle=True, input_size=16, **stats)
    ds = bench.test_set(0)
    pickle.dumps(ds)
    xb, yb = next(iter(DataLoader(ds, batch_size=8, num_workers=1)))
    assert xb.shape == (8, 3, 16, 16) and yb.dtype == torch.int64


def test_uneven_split_is_an_error(digits):
    with pytest.raises(ValueError, match="10 classes cannot be split into 3 tasks"):
        Benchmark(digits, num_tasks=3, seed=0, shuffle=True, input_size=16)
    with pytest.raises(IndexError):
        Benchmark(digits, num_tasks=5, seed=0, shuffle=True, input_size=16).test_set(5)


def compose(name, **paths):
    node = OmegaConf.load(CONF / f"{name}.yaml")
    primary = {"paths": {"data_dir": "/nonexistent", "cache_dir": "/nonexistent", **paths}, "seed": 0}
    return OmegaConf.merge(primary, {"dataset": node}).dataset


def test_dataset_yamls_have_the_same_shape():
    expected_tasks = {"digits": 5, "cifar100": 10, "imr": 10, "cub": 10, "five_datasets": 5, "imagenet_a": 10,
                      "objectnet": 20, "omnibenchmark": 10, "vtab": 5, "domainnet": 5}
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert set(expected_tasks) <= set(names)
    for name in names:
        node = compose(name)
        assert node.name == name
        assert node.num_tasks == expected_tasks[name]
        assert isinstance(node.shuffle, bool)
        assert node.source._target_.startswith("norga.data.")
        assert node.source.root == "/nonexistent" and node.source.download is False


def test_build_benchmark_digits_default():
    bench = build_benchmark(compose("digits"), input_size=24, seed=3)
    assert (bench.num_classes, bench.num_tasks) == (10, 5)
    assert all(len(cs) == 2 for cs in bench.task_classes)
    expected = list(range(10))
    __import__("random").Random(3).shuffle(expected)
    assert bench.class_order == expected
    x, _ = bench.train_set(0)[0]
    assert x.shape == (3, 24, 24)


def test_build_benchmark_imr_and_cub_from_yaml(tmp_path):
    make_imagenet_r(tmp_path / "data", num_classes=10, n_per_class=5)
    make_cub(tmp_path / "data", num_classes=10, n_train_per_class=2, n_test_per_class=1)
    imr = compose("imr", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    imr.source.expected_classes = 10
    bench = build_benchmark(imr, input_size=32, seed=0)
    assert (bench.num_classes, len(bench.train_source), len(bench.test_source)) == (10, 40, 10)
    assert list((tmp_path / "cache").glob("imagenet-r-split-*.json"))
    cub = build_benchmark(compose("cub", data_dir=str(tmp_path / "data")), input_size=32, seed=0)
    assert (cub.num_classes, len(cub.train_source), len(cub.test_source)) == (10, 20, 10)
    x, y = cub.test_set(9)[0]
    assert x.shape == (3, 32, 32) and y in cub.task_classes[9]
