"""ImageNet-R: deterministic stratified 80/20 split, cached outside root and reused."""

from __future__ import annotations

import json

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


def test_reference_rearranged_layout_is_read_as_is(tmp_path):
    # The reference code moves the files into imagenet-r/{train,test}/<wnid>/; such a copy still loads.
    make_imagenet_r(tmp_path / "a", num_classes=3, n_per_class=4)
    base = tmp_path / "data" / "imagenet-r"
    layout = {"train": ["art_0.jpg", "cartoon_1.jpg", "sketch_2.jpg"], "test": ["art_3.jpg"]}
    for k in range(3):
        for split, names in layout.items():
            (base / split / wnid(k)).mkdir(parents=True)
            for name in names:
                src = tmp_path / "a" / "imagenet-r" / wnid(k) / name
                (base / split / wnid(k) / name).write_bytes(src.read_bytes())
    with pytest.warns(UserWarning, match="reference code"):
        pair = load_imagenet_r(str(tmp_path / "data"), cache_dir=tmp_path / "cache")
    assert pair.train.classes == [wnid(k) for k in range(3)]
    assert np.bincount(pair.train.labels).tolist() == [3, 3, 3]
    assert np.bincount(pair.test.labels).tolist() == [1, 1, 1]
    assert pair.test.image(0).mode == "RGB"
    assert not (tmp_path / "cache").exists()
