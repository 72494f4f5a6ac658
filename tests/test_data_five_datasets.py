"""5-Datasets: order shuffled by the seed, labels offset, each part keeps its own transform."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from norga.data import Benchmark, build_benchmark, load_five_datasets, part_order
from tests.fake_datasets import make_five_datasets

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
KIND = {"cifar10": "cifar100", "svhn": "default", "mnist": "default", "notmnist": "default",
        "fashionmnist": "default"}
# train/test sizes written by make_five_datasets
SIZES = {"svhn": (20, 10), "mnist": (20, 10), "cifar10": (20, 10), "notmnist": (20, 10),
         "fashionmnist": (20, 10)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_five_datasets(tmp_path_factory.mktemp("five"))


def load(root, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_five_datasets(str(root), seed=seed)


def test_order_follows_seed():
    assert part_order(0) == part_order(0)
    # the reference: random.seed(seed); random.shuffle(['SVHN', 'MNIST', 'CIFAR10', 'NotMNIST', 'FashionMNIST'])
    expected = ["SVHN", "MNIST", "CIFAR10", "NotMNIST", "FashionMNIST"]
    __import__("random").Random(40).shuffle(expected)
    assert part_order(40) == expected
    orders = {tuple(part_order(s)) for s in range(10)}
    assert len(orders) > 1
    assert all(sorted(o) == sorted(part_order(0)) for o in orders)


def test_labels_offset_by_classes_before(root):
    pair = load(root, seed=1)
    names = [n.lower() for n in part_order(1)]
    assert pair.train.names == names
    assert pair.num_classes == 50
    start = 0
    for k, name in enumerate(names):
        n_train = SIZES[name][0]
        labels = pair.train.labels[start:start + n_train]
        assert labels.min() >= 10 * k and labels.max() < 10 * (k + 1)
        assert pair.train.classes[10 * k].startswith(f"{name}/")
        start += n_train
    assert len(pair.train) == sum(s[0] for s in SIZES.values())
    assert len(pair.test) == sum(s[1] for s in SIZES.values())


def test_each_item_keeps_its_own_transform_kind(root):
    # Whatever comes after CIFAR-10 must keep the default transform (the reference's defect is not copied).
    for seed in range(4):
        pair = load(root, seed)
        starts = np.cumsum([0] + [SIZES[n][0] for n in pair.train.names])
        for k, name in enumerate(pair.train.names):
            for i in (starts[k], starts[k + 1] - 1):
                assert pair.train.transform_kind_at(int(i)) == KIND[name]
                assert pair.train.image(int(i)).mode == "RGB"
    assert pair.train.transform_kind == "mixed"
    assert set(pair.train.transform_kinds) == {"cifar100", "default"}


def test_benchmark_tasks_are_whole_datasets_with_their_transforms(root):
    pair = load(root, seed=2)
    bench = Benchmark(pair, num_tasks=5, seed=2, shuffle=False, input_size=32)
    for t, name in enumerate(pair.train.names):
        assert bench.task_classes[t] == list(range(10 * t, 10 * t + 10))
        ds = bench.train_set(t)
        assert len(ds) == SIZES[name][0]
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and 10 * t <= y < 10 * t + 10
        # CIFAR-10 items are normalised with CIFAR stats (values leave [0, 1]); the others are not.
        xt, _ = bench.test_set(t)[0]
        if name == "cifar10":
            assert float(xt.min()) < 0.0
        else:
            assert float(xt.min()) >= 0.0 and float(xt.max()) <= 1.0


def test_config_node_builds_the_benchmark(root):
    node = OmegaConf.load(CONF / "five_datasets.yaml")
    cfg = OmegaConf.merge({"paths": {"data_dir": str(root)}, "seed": 4}, {"dataset": node})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench = build_benchmark(cfg.dataset, input_size=32, seed=cfg.seed)
    assert bench.num_tasks == 5 and bench.num_classes == 50
    assert bench.class_order == list(range(50))  # tasks = datasets, in the seed's order
    assert bench.train_source.names == [n.lower() for n in part_order(4)]
