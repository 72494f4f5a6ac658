"""Missing datasets fail early and say what to put where; reading never writes inside root."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import norga.data.cifar as cifar_module
from norga.data import (
    DatasetNotFoundError,
    load_cifar10,
    load_cifar100,
    load_cub200,
    load_fashion_mnist,
    load_five_datasets,
    load_imagenet_r,
    load_mnist,
    load_notmnist,
    load_svhn,
)
from tests.fake_datasets import (
    make_cifar100,
    make_cub,
    make_five_datasets,
    make_imagenet_r,
    make_mnist,
    make_svhn,
    snapshot,
)

# loader, the path the message must name (relative to root), a fragment of its source URL,
# whether dataset.source.download=true can fetch it
CASES = [
    (load_cifar100, "cifar-100-python", "cifar-100-python.tar.gz", True),
    (load_cifar10, "cifar-10-batches-py", "cifar-10-python.tar.gz", True),
    (load_mnist, "MNIST/raw", "mnist", True),
    (load_fashion_mnist, "FashionMNIST/raw", "fashion-mnist", True),
    (load_svhn, "svhn", "ufldl.stanford.edu/housenumbers", True),
    (load_notmnist, "notMNIST", "notMNIST.zip", False),
    (load_cub200, "CUB_200_2011", "CUB_200_2011.tgz", False),
    (load_imagenet_r, "imagenet-r", "imagenet-r.tar", False),
]


@pytest.mark.parametrize(
    ("loader", "expected", "url", "downloadable"), CASES, ids=lambda v: getattr(v, "__name__", "")
)
def test_missing_dataset_message(tmp_path, loader, expected, url, downloadable):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        loader(str(root))
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(root / expected) in msg
    assert url in msg
    assert "Expected layout" in msg
    assert "NORGA_DATA_DIR" in msg and "paths.data_dir=" in msg
    assert ("dataset.source.download=true" in msg) == downloadable
    assert "dataset.download=" not in msg  # not a key: the loader's flag lives under dataset.source
    assert list(root.iterdir()) == []  # failed before writing anything


def test_missing_root_itself(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        load_cifar100(str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()


def test_five_datasets_lists_every_missing_part(tmp_path):
    make_mnist(tmp_path)
    make_svhn(tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        load_five_datasets(str(tmp_path), seed=0)
    msg = str(info.value)
    assert "3 datasets not found" in msg
    for part in ("cifar-10-batches-py", "notMNIST", "FashionMNIST/raw"):
        assert str(tmp_path / part) in msg
    assert msg.count("NORGA_DATA_DIR") == 1


def test_download_delegates_to_torchvision_then_reads_our_way(tmp_path, monkeypatch):
    # Offline stand-in for torchvision's CIFAR100(download=True): it leaves the files where torchvision would.
    calls = []

    class FakeTorchvisionCIFAR100:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            make_cifar100(root, n_per_class=1, num_classes=100, n_test_per_class=1)

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeTorchvisionCIFAR100)
    pair = cifar_module.load_cifar100(str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True)]
    assert len(pair.train) == 100
    cifar_module.load_cifar100(str(tmp_path), download=True)  # present now: no second download
    assert len(calls) == 1



def test_svhn_and_mnist_downloads_land_where_the_readers_look(tmp_path, monkeypatch):
    # Offline stand-ins that record where torchvision would be asked to put the files, then write them.
    import torchvision.datasets as tvd

    calls = []

    def fake(kind):
        def init(root, *args, download=False, **kwargs):
            calls.append((kind, str(root), download))
            if kind == "SVHN":
                make_svhn(Path(root).parent)
            else:
                make_mnist(root, fashion=kind == "FashionMNIST", gz=True)
        return init

    for kind in ("SVHN", "MNIST", "FashionMNIST"):
        monkeypatch.setattr(tvd, kind, fake(kind))
    assert len(load_svhn(str(tmp_path), download=True).train) == 20
    assert len(load_fashion_mnist(str(tmp_path), download=True).test) == 10
    assert len(load_mnist(str(tmp_path), download=True).train) == 20
    assert ("SVHN", str(tmp_path / "svhn"), True) in calls  # torchvision's SVHN keeps files in its root
    assert ("FashionMNIST", str(tmp_path), True) in calls and ("MNIST", str(tmp_path), True) in calls

def test_loaders_write_nothing_inside_root(tmp_path):
    root = tmp_path / "data"
    make_cifar100(root, n_per_class=1, num_classes=100)
    make_five_datasets(root)
    make_mnist(root, gz=True)  # .gz beside the plain files, like a torchvision download
    make_cub(root)
    make_imagenet_r(root)
    before = snapshot(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = [
            load_cifar100(str(root)), load_cifar10(str(root)), load_mnist(str(root)),
            load_fashion_mnist(str(root)), load_svhn(str(root)), load_notmnist(str(root)),
            load_cub200(str(root)), load_imagenet_r(str(root), cache_dir=str(tmp_path / "cache")),
            load_five_datasets(str(root), seed=3),
        ]
    for pair in pairs:  # touching the images reads only
        pair.train.image(0)
        pair.test.image(len(pair.test) - 1)
    assert snapshot(root) == before


def test_build_benchmark_reports_missing_files_through_hydra(tmp_path):
    from omegaconf import OmegaConf

    from norga.data import build_benchmark

    cfg = OmegaConf.create({
        "name": "cifar100", "num_tasks": 10, "shuffle": True,
        "source": {"_target_": "norga.data.cifar.load_cifar100", "root": str(tmp_path), "download": False},
    })
    # Hydra wraps errors raised by a _target_; build_benchmark hands back the loader's own error.
    with pytest.raises(DatasetNotFoundError) as info:
        build_benchmark(cfg, input_size=32, seed=0)
    assert str(info.value).startswith("CIFAR-100 not found")
    assert str(tmp_path / "cifar-100-python") in str(info.value)

