"""paths.data_dir may point at the data folder the reference code (MoE_PromptCL, ``--data-path``) leaves
behind: every dataset loads from the layout the reference's loaders download, unpack and rearrange."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

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
    cifar_pattern,
    make_cifar10,
    make_cifar100,
    make_cub,
    make_imagenet_r,
    make_mnist,
    make_mnist_legacy,
    make_notmnist,
    make_svhn,
    mnist_pattern,
    snapshot,
    wnid,
)

# what the reference's downloads leave beside the unpacked folders
ARCHIVES = ("cifar-100-python.tar.gz", "cifar-10-python.tar.gz", "notMNIST.zip", "CUB200(2011).zip",
            "CUB_200_2011.tgz", "imagenet-r.tar")


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder after the reference code has run once on each dataset."""
    root = tmp_path_factory.mktemp("local_datasets")
    make_cifar100(root, n_per_class=1)  # torchvision's CIFAR100(data_path): cifar-100-python/
    make_cifar10(root, n_per_class=2)  # torchvision's CIFAR10(data_path): cifar-10-batches-py/
    for gz in (True, False):  # torchvision keeps the downloaded .gz beside the unpacked idx files
        make_mnist(root, n_train=20, n_test=10, gz=gz, folder="MNIST_RGB")  # its MNIST_RGB(datasets.MNIST)
        make_mnist(root, fashion=True, n_train=30, n_test=10, gz=gz)  # its FashionMNIST(MNIST_RGB)
    make_svhn(root, n_train=20, n_test=10, folder="")  # torchvision's SVHN(data_path): the .mat files in root
    make_notmnist(root, n_train_per_class=2, n_test_per_class=1, broken=0)  # notMNIST.zip unpacked in root
    make_cub(root, num_classes=4, n_train_per_class=3, n_test_per_class=2, moved=True)
    make_imagenet_r(root, num_classes=3, n_per_class=5, reference_split=True)
    for name in ARCHIVES:
        (root / name).write_bytes(b"archive")
    return root


def test_layout_is_the_references(reference_root: Path) -> None:
    # the folders that set it apart from norga's own layout
    assert not (reference_root / "MNIST").exists() and (reference_root / "MNIST_RGB" / "raw").is_dir()
    assert not (reference_root / "svhn").exists() and (reference_root / "train_32x32.mat").is_file()
    cub = reference_root / "CUB_200_2011"
    assert not any(p.is_file() for p in (cub / "images").rglob("*")) and (cub / "train").is_dir()
    assert sorted(p.name for p in (reference_root / "imagenet-r").iterdir()) == ["test", "train"]


def test_cifar(reference_root: Path) -> None:
    c100, c10 = load_cifar100(str(reference_root)), load_cifar10(str(reference_root))
    assert (len(c100.train), len(c100.test), c100.num_classes) == (100, 100, 100)
    assert (len(c10.train), len(c10.test), c10.num_classes) == (20, 10, 10)


def test_mnist_from_the_mnist_rgb_folder(reference_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="norga.data.mnist"):
        pair = load_mnist(str(reference_root))
    assert (len(pair.train), len(pair.test), pair.num_classes) == (20, 10, 10)
    assert pair.train.labels.tolist() == [i % 10 for i in range(20)]
    np.testing.assert_array_equal(np.asarray(pair.train.image(7))[..., 0], mnist_pattern(7))
    assert "MNIST_RGB/raw/train-images-idx3-ubyte" in caplog.text  # which copy was read


def test_fashion_mnist(reference_root: Path) -> None:
    pair = load_fashion_mnist(str(reference_root))
    assert (len(pair.train), len(pair.test)) == (30, 10)


@pytest.mark.parametrize("folder", ["MNIST", "MNIST_RGB"])
def test_mnist_from_old_torchvisions_processed_files(tmp_path: Path, folder: str) -> None:
    # torchvision before 0.9 kept processed/{training,test}.pt, and the reference's MNIST_RGB reads them first
    make_mnist_legacy(tmp_path, folder=folder, n_train=20, n_test=10)
    pair = load_mnist(str(tmp_path))
    assert (len(pair.train), len(pair.test)) == (20, 10)
    assert pair.test.labels.tolist() == [i % 10 for i in range(10)] and pair.test.labels.dtype == np.int64
    np.testing.assert_array_equal(np.asarray(pair.test.image(4))[..., 1], mnist_pattern(4))


def test_svhn_from_root_itself(reference_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="norga.data.svhn"):
        pair = load_svhn(str(reference_root))
    assert (len(pair.train), len(pair.test)) == (20, 10)
    assert pair.train.labels.tolist() == [i % 10 for i in range(20)]
    np.testing.assert_array_equal(np.asarray(pair.test.image(3)), cifar_pattern(3))
    assert str(reference_root / "train_32x32.mat") in caplog.text


def test_svhn_folder_wins_over_files_in_root(tmp_path: Path) -> None:
    make_svhn(tmp_path, n_train=20, n_test=10)
    make_svhn(tmp_path, n_train=30, n_test=10, folder="")
    assert len(load_svhn(str(tmp_path)).train) == 20


def test_svhn_missing_names_both_places(tmp_path: Path) -> None:
    make_svhn(tmp_path, folder="")
    (tmp_path / "test_32x32.mat").unlink()  # a lone file in either place is no copy
    with pytest.raises(DatasetNotFoundError) as err:
        load_svhn(str(tmp_path))
    message = str(err.value)
    assert f"{tmp_path / 'svhn'}/{{train,test}}_32x32.mat or {tmp_path}/{{train,test}}_32x32.mat" in message
    assert "svhn/test_32x32.mat" in message and "directly in root" in message


def test_notmnist(reference_root: Path) -> None:
    pair = load_notmnist(str(reference_root))
    assert (len(pair.train), len(pair.test)) == (20, 10) and pair.train.classes == list("ABCDEFGHIJ")


def test_cub_with_images_moved_into_train_and_test(reference_root: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="norga.data.cub"):
        pair = load_cub200(str(reference_root))
    assert (len(pair.train), len(pair.test), pair.num_classes) == (12, 8, 4)
    base = reference_root / "CUB_200_2011"
    assert all(p.startswith(str(base / "train")) for p in pair.train.paths)
    assert all(p.startswith(str(base / "test")) for p in pair.test.paths)
    # labels from image_class_labels.txt, split from train_test_split.txt, as for the untouched folder
    assert all(f"/{int(y) + 1:03d}.Bird_" in p for p, y in zip(pair.train.paths, pair.train.labels, strict=True))
    assert np.bincount(pair.test.labels).tolist() == [2, 2, 2, 2]
    assert pair.train.image(0).mode == "RGB"
    assert "20 of 20 images read from" in caplog.text


def test_cub_moved_without_the_empty_images_folder(tmp_path: Path) -> None:
    base = make_cub(tmp_path, num_classes=2, moved=True)
    for folder in (base / "images").iterdir():
        folder.rmdir()
    (base / "images").rmdir()
    assert len(load_cub200(str(tmp_path)).train) == 6


def test_cub_image_in_neither_place_is_reported(tmp_path: Path) -> None:
    base = make_cub(tmp_path, num_classes=2, moved=True)
    lost = next((base / "test").rglob("*.jpg"))
    lost.unlink()
    with pytest.raises(DatasetNotFoundError, match=lost.name):
        load_cub200(str(tmp_path))


def test_imagenet_r_with_the_references_split(reference_root: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="norga.data.imagenet_r"):
        pair = load_imagenet_r(str(reference_root), cache_dir=tmp_path / "cache")
    assert pair.train.classes == [wnid(k) for k in range(3)]
    assert (len(pair.train), len(pair.test)) == (12, 3)
    assert "using the split found in" in caplog.text


def test_five_datasets(reference_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair = load_five_datasets(str(reference_root), seed=42)
    assert pair.num_classes == 50
    assert len(pair.train) == 20 + 20 + 20 + 20 + 30


def test_nothing_is_written_inside_the_folder(reference_root: Path, tmp_path: Path) -> None:
    before = snapshot(reference_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for load in (load_cifar100, load_cifar10, load_mnist, load_fashion_mnist, load_svhn, load_notmnist,
                     load_cub200):
            load(str(reference_root))
        load_imagenet_r(str(reference_root), cache_dir=str(tmp_path / "cache"))
        load_five_datasets(str(reference_root), seed=0)
    assert snapshot(reference_root) == before
