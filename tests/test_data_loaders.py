"""Each loader reads its real on-disk format (written tiny by tests.fake_datasets)."""

from __future__ import annotations

import os
import pickle
import pickletools

import numpy as np
import pytest

from norga.data import (
    ArraySource,
    FileSource,
    SourcePair,
    load_cifar10,
    load_cifar100,
    load_cub200,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_notmnist,
    load_svhn,
)
from norga.data.mnist import read_idx
from tests.fake_datasets import (
    cifar_pattern,
    make_cifar10,
    make_cifar100,
    make_cub,
    make_mnist,
    make_notmnist,
    make_svhn,
    mnist_pattern,
)


def assert_rgb(pair: SourcePair) -> None:
    for source in (pair.train, pair.test):
        for i in (0, len(source) - 1):
            assert source.image(i).mode == "RGB"


def test_cifar100_reads_pickles(tmp_path):
    make_cifar100(tmp_path, n_per_class=2, num_classes=100, n_test_per_class=1)
    pair = load_cifar100(str(tmp_path))
    assert (len(pair.train), len(pair.test), pair.num_classes) == (200, 100, 100)
    assert pair.train.classes[7] == "class_007"
    assert pair.train.labels.dtype == np.int64
    assert np.bincount(pair.train.labels).tolist() == [2] * 100
    assert pair.train.transform_kind == "cifar100"
    # The pixel pattern survives the CHW-planes -> HWC conversion.
    i = 37
    np.testing.assert_array_equal(np.asarray(pair.train.image(i)), cifar_pattern(int(pair.train.labels[i])))
    assert_rgb(pair)


# the opcodes Python 3 writes for str and bytes; Python 2's cPickle never did
PY3_STRING_OPCODES = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}


@pytest.mark.parametrize(("make", "folder", "load"), [(make_cifar100, "cifar-100-python", load_cifar100),
                                                       (make_cifar10, "cifar-10-batches-py", load_cifar10)])
def test_cifar_fakes_are_python2_pickles_like_the_real_files(tmp_path, make, folder, load):
    make(tmp_path)
    files = sorted((tmp_path / folder).iterdir())
    for path in files:
        raw = path.read_bytes()
        assert raw[:2] == b"\x80\x02", path.name  # PROTO 2, cPickle's highest
        ops = {op.name for op, _, _ in pickletools.genops(raw)}
        assert "SHORT_BINSTRING" in ops and not PY3_STRING_OPCODES & ops, path.name
    # The pixel arrays are Python-2 byte strings holding non-ASCII bytes: Python 3's default pickle.load
    # fails on them, as on the real files; the loader's encoding="latin1" is what reads them.
    batches = [p for p in files if "meta" not in p.name]
    for path in batches:
        with open(path, "rb") as f, pytest.raises(UnicodeDecodeError):
            pickle.load(f)
    pair = load(tmp_path)
    assert pair.train.classes[0] in ("class_000", "airplane")  # names are str, not bytes
    np.testing.assert_array_equal(np.asarray(pair.train.image(0)), cifar_pattern(int(pair.train.labels[0])))


def test_cifar10_reads_all_five_batches(tmp_path):
    make_cifar10(tmp_path, n_per_class=3, n_test_per_class=2)
    pair = load_cifar10(tmp_path)
    assert (len(pair.train), len(pair.test), pair.num_classes) == (30, 20, 10)
    assert pair.train.classes[0] == "airplane"
    assert np.bincount(pair.train.labels).tolist() == [3] * 10
    np.testing.assert_array_equal(np.asarray(pair.test.image(4)), cifar_pattern(int(pair.test.labels[4])))
    # CIFAR-10 takes the CIFAR transform, as in the reference.
    assert pair.train.transform_kind == "cifar100"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fashion", [False, True])
def test_mnist_idx_plain_and_gz(tmp_path, fashion, gz):
    raw = make_mnist(tmp_path, fashion=fashion, n_train=20, n_test=10, gz=gz)
    before = sorted(p.name for p in raw.iterdir())
    pair = (load_fashion_mnist if fashion else load_mnist)(str(tmp_path))
    assert sorted(p.name for p in raw.iterdir()) == before  # .gz read in memory, nothing extracted
    assert (len(pair.train), len(pair.test), pair.num_classes) == (20, 10, 10)
    assert pair.train.labels.tolist() == [i % 10 for i in range(20)]
    assert pair.train.classes[9] == ("Ankle boot" if fashion else "9 - nine")
    img = np.asarray(pair.train.image(3))
    assert img.shape == (28, 28, 3)
    np.testing.assert_array_equal(img[..., 0], mnist_pattern(3))
    np.testing.assert_array_equal(img[..., 0], img[..., 2])  # grey -> RGB
    assert isinstance(pair.train, ArraySource) and pair.train.images.ndim == 3  # kept grey in memory


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + (4).to_bytes(4, "big") + bytes(16))
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(str(path))


def test_svhn_mat_label_10_is_digit_0(tmp_path):
    make_svhn(tmp_path, n_train=20, n_test=10)
    pair = load_svhn(str(tmp_path))
    assert (len(pair.train), len(pair.test), pair.num_classes) == (20, 10, 10)
    assert pair.train.labels.tolist() == [i % 10 for i in range(20)]
    assert pair.train.labels.max() == 9
    np.testing.assert_array_equal(np.asarray(pair.train.image(5)), cifar_pattern(5))
    assert_rgb(pair)


def test_notmnist_skips_broken_files_with_a_warning(tmp_path):
    make_notmnist(tmp_path, n_train_per_class=2, n_test_per_class=1, broken=2)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        pair = load_notmnist(str(tmp_path))
    assert (len(pair.train), len(pair.test), pair.num_classes) == (20, 10, 10)
    assert pair.train.classes == list("ABCDEFGHIJ")
    assert np.bincount(pair.train.labels).tolist() == [2] * 10
    assert isinstance(pair.train, FileSource)
    assert all(not os.path.basename(p).startswith("broken") for p in pair.train.paths)
    assert_rgb(pair)


def test_cub_official_split_and_zero_based_labels(tmp_path):
    make_cub(tmp_path, num_classes=4, n_train_per_class=3, n_test_per_class=2)
    pair = load_cub200(str(tmp_path))
    assert (len(pair.train), len(pair.test), pair.num_classes) == (12, 8, 4)
    assert pair.train.classes == ["Bird_1", "Bird_2", "Bird_3", "Bird_4"]
    assert np.bincount(pair.train.labels).tolist() == [3, 3, 3, 3]
    assert np.bincount(pair.test.labels).tolist() == [2, 2, 2, 2]
    assert pair.train.labels.min() == 0 and pair.train.labels.max() == 3
    pairs = zip(pair.train.paths, pair.train.labels, strict=True)
    assert all(f"{int(y) + 1:03d}.Bird_" in p for p, y in pairs)
    assert pair.train.image(0).mode == "RGB"  # stored grey on disk
    assert_rgb(pair)


def test_cub_mismatched_index_files_fail(tmp_path):
    base = make_cub(tmp_path, num_classes=2, n_train_per_class=1, n_test_per_class=1)
    (base / "train_test_split.txt").write_text("1 1\n")
    with pytest.raises(ValueError, match="different ids"):
        load_cub200(str(tmp_path))


def test_digits_embedded_split():
    pair = load_digits()
    assert len(pair.train) + len(pair.test) == 1797
    assert pair.num_classes == 10
    train_counts, test_counts = np.bincount(pair.train.labels), np.bincount(pair.test.labels)
    fractions = train_counts / (train_counts + test_counts)
    assert np.all(np.abs(fractions - 0.8) < 0.01)
    assert pair.train.images.dtype == np.uint8 and pair.train.images.max() == 255
    img = pair.test.image(0)
    assert img.mode == "RGB" and img.size == (8, 8)
    assert pair.train.transform_kind == "digits"
    again = load_digits(root="/ignored")
    np.testing.assert_array_equal(again.test.labels, pair.test.labels)
    np.testing.assert_array_equal(again.test.images, pair.test.images)
