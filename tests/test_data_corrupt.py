"""A dataset file that is there but damaged fails with a DatasetFileError naming the file and what it should
hold, never with a bare KeyError / EOFError / UnicodeDecodeError from deep inside a reader."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.io import savemat

from norga.data import (
    DatasetFileError,
    build_benchmark,
    load_cifar10,
    load_cifar100,
    load_cub200,
    load_imagenet_r,
    load_mnist,
    load_svhn,
)
from tests.fake_datasets import (
    make_cifar10,
    make_cifar100,
    make_cub,
    make_imagenet_r,
    make_mnist,
    make_svhn,
    py2_pickle,
    wnid,
)


def expect_file_error(load: Callable[[], object], path: Path, *fragments: str) -> str:
    """``load()`` raises DatasetFileError naming ``path``, saying what was expected, with each fragment."""
    with pytest.raises(DatasetFileError) as err:
        load()
    message = str(err.value)
    assert err.value.path == str(path)
    assert str(path) in message and "Expected" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- CIFAR --------------------------------------------------------------------------------------------------

UNPICKLED: list[str] = []


def _unpickle_marker(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class _PickledCall:
    def __reduce__(self) -> tuple:
        return _unpickle_marker, ("ran",)


def _cifar100_batch(rows: int = 4, **changes: object) -> dict:
    batch = {"filenames": [f"{i}.png" for i in range(rows)], "batch_label": "training batch 1 of 1",
             "fine_labels": list(range(rows)), "coarse_labels": [0] * rows,
             "data": np.zeros((rows, 3072), dtype=np.uint8)}
    return batch | changes


CIFAR100_BAD = {  # file under cifar-100-python -> (content, what the message says)
    "empty train": ("train", b"", "the file is empty"),
    "text in place of train": ("train", b"<html>502 Bad Gateway</html>\n", "UnpicklingError"),
    "truncated train": ("train", py2_pickle(_cifar100_batch(50))[:700], "a CIFAR python pickle"),
    "meta without fine_label_names": ("meta", py2_pickle({"coarse_label_names": ["a"]}),
                                      "it lacks fine_label_names (it has: coarse_label_names)"),
    "meta not a dict": ("meta", py2_pickle(["class_000"]), "it holds a list"),
    "train without fine_labels": ("train", py2_pickle({"data": np.zeros((2, 3072), dtype=np.uint8)}),
                                  "it lacks fine_labels"),
    "data of the wrong shape": ("test", py2_pickle(_cifar100_batch(data=np.zeros((4, 1024), dtype=np.uint8))),
                                "'data' is a uint8 array of shape (4, 1024)"),
    "fewer labels than rows": ("train", py2_pickle(_cifar100_batch(fine_labels=[0, 1])),
                               "4 rows of 'data' but 2 values in 'fine_labels'"),
    "label beyond the classes": ("test", py2_pickle(_cifar100_batch(fine_labels=[0, 1, 2, 100])),
                                 "not class ids 0..99"),
}


@pytest.mark.parametrize("case", CIFAR100_BAD)
def test_damaged_cifar100_file_is_named(tmp_path: Path, case: str) -> None:
    name, content, fragment = CIFAR100_BAD[case]
    base = make_cifar100(tmp_path, n_per_class=1)
    (base / name).write_bytes(content)
    expect_file_error(lambda: load_cifar100(str(tmp_path)), base / name, fragment, "cifar-100-python.tar.gz")


def test_damaged_cifar10_batch_is_named(tmp_path: Path) -> None:
    base = make_cifar10(tmp_path, n_per_class=1)
    batch = pickle.loads((base / "data_batch_3").read_bytes(), encoding="latin1")
    (base / "data_batch_3").write_bytes(py2_pickle({k: v for k, v in batch.items() if k != "labels"}))
    expect_file_error(lambda: load_cifar10(tmp_path), base / "data_batch_3", "it lacks labels")


def test_cifar_pickle_asking_for_other_objects_is_refused_unrun(tmp_path: Path) -> None:
    base = make_cifar100(tmp_path, n_per_class=1)
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a"], "x": _PickledCall()}, protocol=2))
    UNPICKLED.clear()
    expect_file_error(lambda: load_cifar100(tmp_path), base / "meta", "_unpickle_marker, which no CIFAR file")
    assert UNPICKLED == []


def test_damaged_file_surfaces_through_build_benchmark(tmp_path: Path) -> None:
    base = make_cifar100(tmp_path, n_per_class=1)
    (base / "test").write_bytes(b"")
    cfg = OmegaConf.create({"name": "cifar100", "num_tasks": 10, "shuffle": True, "source": {
        "_target_": "norga.data.cifar.load_cifar100", "root": str(tmp_path), "download": False}})
    # Hydra wraps the loader's error; build_benchmark hands back the DatasetFileError itself
    expect_file_error(lambda: build_benchmark(cfg, input_size=32, seed=0), base / "test")


# --- MNIST idx files ----------------------------------------------------------------------------------------

def _idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)


MNIST_BAD = {  # file under MNIST/raw -> (content, what the message says)
    "not gzip": ("train-images-idx3-ubyte.gz", b"<html>not found</html>", "BadGzipFile"),
    "truncated gzip": ("train-labels-idx1-ubyte.gz", gzip.compress(_idx_header(20) + bytes(20))[:-12],
                       "EOFError"),
    "empty": ("t10k-images-idx3-ubyte.gz", b"", "the file is empty"),
    "wrong magic": ("train-images-idx3-ubyte.gz", gzip.compress(bytes([0, 0, 0x0D, 3]) + bytes(12)),
                    "not an unsigned-byte idx file"),
    "header cut short": ("t10k-labels-idx1-ubyte.gz", gzip.compress(bytes([0, 0, 8, 3, 0, 0])),
                         "header is cut short"),
    "fewer bytes than the header says": ("train-images-idx3-ubyte.gz",
                                         gzip.compress(_idx_header(20, 28, 28) + bytes(100)),
                                         "the header says (20, 28, 28) (15680 bytes) but 100 follow"),
    "labels not one per image": ("train-labels-idx1-ubyte.gz", gzip.compress(_idx_header(7) + bytes(7)),
                                 "it holds labels of shape (7,)"),
    "label beyond the classes": ("t10k-labels-idx1-ubyte.gz", gzip.compress(_idx_header(10) + bytes([12] * 10)),
                                 "it holds labels 12..12"),
    "images without 3 dimensions": ("t10k-images-idx3-ubyte.gz",
                                    gzip.compress(_idx_header(10, 784) + bytes(7840)), "shape (10, 784)"),
}


@pytest.mark.parametrize("case", MNIST_BAD)
def test_damaged_mnist_file_is_named(tmp_path: Path, case: str) -> None:
    name, content, fragment = MNIST_BAD[case]
    raw = make_mnist(tmp_path, n_train=20, n_test=10, gz=True)
    (raw / name).write_bytes(content)
    expect_file_error(lambda: load_mnist(str(tmp_path)), raw / name, fragment, "MNIST")


# --- SVHN .mat ----------------------------------------------------------------------------------------------

def _mat(path: Path, **arrays: np.ndarray) -> bytes:
    savemat(path, arrays)
    return path.read_bytes()


SVHN_BAD = {  # (content written as train_32x32.mat, what the message says)
    "empty": (lambda p: b"", "the file is empty"),
    "html page": (lambda p: b"<!DOCTYPE html><html>moved</html>" * 4, "a MATLAB .mat file"),
    "without y": (lambda p: _mat(p, X=np.zeros((32, 32, 3, 2), np.uint8)), "it lacks y (it has: X)"),
    "X of the wrong shape": (lambda p: _mat(p, X=np.zeros((28, 28, 2), np.uint8), y=np.ones((2, 1), np.uint8)),
                             "X is a uint8 array of shape (28, 28, 2)"),
    "labels not one per image": (lambda p: _mat(p, X=np.zeros((32, 32, 3, 4), np.uint8),
                                                y=np.ones((3, 1), np.uint8)), "X holds 4 images but y 3 labels"),
    "label 0": (lambda p: _mat(p, X=np.zeros((32, 32, 3, 2), np.uint8), y=np.zeros((2, 1), np.uint8)),
                "y holds values outside 1..10"),
}


@pytest.mark.parametrize("case", SVHN_BAD)
def test_damaged_svhn_file_is_named(tmp_path: Path, case: str) -> None:
    make_content, fragment = SVHN_BAD[case]
    base = make_svhn(tmp_path, n_train=4, n_test=2)
    path = base / "train_32x32.mat"
    content = make_content(tmp_path / "scratch.mat")
    path.write_bytes(content)
    expect_file_error(lambda: load_svhn(str(tmp_path)), path, fragment, "ufldl.stanford.edu")


# --- CUB index files ----------------------------------------------------------------------------------------

CUB_BAD = {  # index file -> (edit of its text, what the message says)
    "id not a number": ("images.txt", lambda t: t.replace("3 ", "three ", 1), "line 3 is 'three "),
    "line without a value": ("classes.txt", lambda t: t + "5\n", "line 5 is '5'"),
    "id twice": ("image_class_labels.txt", lambda t: t + "1 1\n", "id 1 appears twice"),
    "not UTF-8 text": ("train_test_split.txt", lambda t: "\udcff\udcfe" + t, "UnicodeDecodeError"),
    "split neither 0 nor 1": ("train_test_split.txt", lambda t: t.replace("2 1\n", "2 yes\n"),
                              "image 2 has 'yes', not 1 (train) or 0 (test)"),
    "label not a class id": ("image_class_labels.txt", lambda t: t.replace("4 1\n", "4 9\n"),
                             "image 4 has '9', not a class id of classes.txt (1..4)"),
    "class ids with a gap": ("classes.txt", lambda t: t.replace("2 002", "7 002"), "not 1..N"),
}


@pytest.mark.parametrize("case", CUB_BAD)
def test_damaged_cub_index_file_is_named(tmp_path: Path, case: str) -> None:
    name, edit, fragment = CUB_BAD[case]
    base = make_cub(tmp_path, num_classes=4, n_train_per_class=3, n_test_per_class=2)
    path = base / name
    text = path.read_text()
    edited = edit(text)
    assert edited != text  # the edit applies to what make_cub writes
    path.write_bytes(edited.encode("utf-8", "surrogateescape"))
    expect_file_error(lambda: load_cub200(str(tmp_path)), path, fragment, "CUB_200_2011.tgz")


# --- image files (ImageNet-R, CUB, notMNIST are read one image at a time) -------------------------------------

@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 3], lambda b: b""], ids=["truncated", "empty"])
def test_damaged_image_is_named_when_read(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    make_imagenet_r(tmp_path / "data", num_classes=2, n_per_class=5)
    pair = load_imagenet_r(str(tmp_path / "data"), cache_dir=tmp_path / "cache")
    path = Path(pair.train.paths[3])
    path.write_bytes(damage(path.read_bytes()))
    assert path.parent.name in (wnid(0), wnid(1))
    expect_file_error(lambda: pair.train.image(3), path, "an image file")
    pair.train.image(2)  # the others still read
