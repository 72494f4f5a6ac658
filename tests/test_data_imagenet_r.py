"""ImageNet-R: deterministic stratified 80/20 split, cached outside root and reused."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import norga.data.imagenet_r as imr
from norga.data import load_imagenet_r
from tests.fake_datasets import make_imagenet_r, snapshot, wnid


@pytest.fixture()
def root(tmp_path):
    make_imagenet_r(tmp_path / "data", num_classes=4, n_per_class=7)
    return tmp_path / "data"


def rel(paths):
    return sorted("/".join(p.split("/")[-2:]) for p in paths)


def test_split_is_stratified_80_20_and_labels_follow_sorted_folders(root, tmp_path):
    pair = load_imagenet_r(str(root), cache_dir=tmp_path / "cache")
    assert pair.num_classes == 4
    assert pair.train.classes == [wnid(k) for k in range(4)]
    # round(0.8 * 7) = 6 train, 1 test in every class
    assert np.bincount(pair.train.labels).tolist() == [6] * 4
    assert np.bincount(pair.test.labels).tolist() == [1] * 4
    assert not set(pair.train.paths) & set(pair.test.paths)
    labels = np.r_[pair.train.labels, pair.test.labels]
    for path, y in zip(pair.train.paths + pair.test.paths, labels, strict=True):
        assert path.split("/")[-2] == wnid(int(y))
    assert pair.train.image(0).mode == "RGB"


def test_split_is_deterministic_across_cache_dirs(root, tmp_path):
    a = load_imagenet_r(str(root), cache_dir=tmp_path / "cache_a")
    b = load_imagenet_r(str(root), cache_dir=tmp_path / "cache_b")
    assert rel(a.train.paths) == rel(b.train.paths)
    assert rel(a.test.paths) == rel(b.test.paths)


def test_split_cached_outside_root_and_reused(root, tmp_path, monkeypatch):
    before = snapshot(root)
    cache = tmp_path / "cache"
    first = load_imagenet_r(str(root), cache_dir=cache)
    assert snapshot(root) == before
    files = list(cache.glob("imagenet-r-split-*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert sorted(record["train"]) == rel(first.train.paths)

    def no_split(*args, **kwargs):
        raise AssertionError("the cached split should have been reused")

    monkeypatch.setattr(imr, "stratified_split", no_split)
    second = load_imagenet_r(str(root), cache_dir=cache)
    assert second.train.paths == first.train.paths
    assert second.test.paths == first.test.paths


def test_changed_folder_gives_a_new_split_file(root, tmp_path):
    cache = tmp_path / "cache"
    load_imagenet_r(str(root), cache_dir=cache)
    folder = root / "imagenet-r" / wnid(2)
    (folder / "extra_0.jpg").write_bytes((folder / "art_0.jpg").read_bytes())
    pair = load_imagenet_r(str(root), cache_dir=cache)
    assert len(list(cache.glob("imagenet-r-split-*.json"))) == 2
    assert len(pair.train) + len(pair.test) == 29


def test_cache_dir_defaults_to_env(root, tmp_path, monkeypatch):
    monkeypatch.setenv("NORGA_CACHE_DIR", str(tmp_path / "env_cache"))
    load_imagenet_r(str(root))
    assert len(list((tmp_path / "env_cache").glob("imagenet-r-split-*.json"))) == 1


def test_cache_dir_inside_root_is_refused(root):
    with pytest.raises(ValueError, match="inside the dataset root"):
        load_imagenet_r(str(root), cache_dir=root / "imagenet-r" / ".cache")


def test_expected_classes_guards_partial_folders(root, tmp_path):
    with pytest.raises(ValueError, match="expected 200"):
        load_imagenet_r(str(root), cache_dir=tmp_path / "cache", expected_classes=200)


def test_stratified_split_rounds_half_up():
    classes = ["a", "b"]
    files = {"a": [f"{i}.jpg" for i in range(5)], "b": ["x.jpg", "y.jpg"]}
    split = imr.stratified_split(classes, files, 0.75)  # 3.75 -> 4 ; 1.5 -> 2
    assert sum(p.startswith("a/") for p in split["train"]) == 4
    assert sum(p.startswith("b/") for p in split["train"]) == 2


def reference_layout(tmp_path, num_classes=3, left_behind=0):
    """What the reference code leaves (3 train and 1 test image per class), ``left_behind`` class folders
    still holding an image as after an interrupted move, and an emptied one as after a complete move."""
    base = make_imagenet_r(tmp_path / "data", num_classes=num_classes, n_per_class=4, reference_split=True)
    for k in range(left_behind):
        (base / wnid(k)).mkdir()
        (base / wnid(k) / "art_9.jpg").write_bytes((base / "test" / wnid(k) / "art_3.jpg").read_bytes())
    (base / "n09999999").mkdir()  # an emptied class folder is harmless
    return tmp_path / "data"


def test_reference_rearranged_layout_is_read_as_is(tmp_path, caplog):
    # The reference code moves the files into imagenet-r/{train,test}/<wnid>/; such a copy still loads, with
    # that split, and the log says so.
    root = reference_layout(tmp_path)
    with caplog.at_level(logging.INFO, logger="norga.data.imagenet_r"):
        pair = load_imagenet_r(str(root), cache_dir=tmp_path / "cache")
    assert pair.train.classes == [wnid(k) for k in range(3)]
    assert np.bincount(pair.train.labels).tolist() == [3, 3, 3]
    assert np.bincount(pair.test.labels).tolist() == [1, 1, 1]
    assert all("/train/" in p for p in pair.train.paths) and all("/test/" in p for p in pair.test.paths)
    assert pair.test.image(0).mode == "RGB"
    assert not (tmp_path / "cache").exists()
    record = next(r for r in caplog.records if "split" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert f"{root / 'imagenet-r'}/train" in record.getMessage() and "9 train, 3 test" in record.getMessage()
    assert "not norga's deterministic one" in record.getMessage()


def test_norgas_split_is_named_in_the_log(root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="norga.data.imagenet_r"):
        load_imagenet_r(str(root), cache_dir=tmp_path / "cache")
        load_imagenet_r(str(root), cache_dir=tmp_path / "cache")
    saved, read = [r.getMessage() for r in caplog.records if "norga's split" in r.getMessage()]
    cache_file = str(next((tmp_path / "cache").glob("imagenet-r-split-*.json")))
    assert "24 train, 4 test" in saved and f"saved to {cache_file}" in saved
    assert f"read from {cache_file}" in read


def test_interrupted_reference_move_is_refused(tmp_path):
    root = reference_layout(tmp_path, left_behind=2)
    with pytest.raises(ValueError, match=r"(?s)also 2 class folders with images.*interrupted.*imagenet-r\.tar"):
        load_imagenet_r(str(root), cache_dir=tmp_path / "cache")
