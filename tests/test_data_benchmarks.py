"""The LAMDA family's benchmarks and DomainNet, each read in place from small generated files in the real
on-disk layout: ImageNet-A, ObjectNet, OmniBenchmark, VTAB (both folder names), CUB and ImageNet-R in PILOT's
``{train,test}/<class>/`` layout, DomainNet with CODA-Prompt's YAML split or the official lists."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from norga.data import build_benchmark, load_cub200, load_imagenet_r
from norga.data.catalog import check_files
from norga.data.domainnet import load_domainnet
from norga.data.errors import DatasetFileError, DatasetNotFoundError
from norga.data.imagenet_a import IMAGENET_A, load_imagenet_a
from norga.data.objectnet import load_objectnet
from norga.data.omnibenchmark import load_omnibenchmark
from norga.data.split_folder import verify_archive
from norga.data.vtab import load_vtab
from norga.licences import LicenseNotAcceptedError
from tests.fake_datasets import make_cub, make_split_folders

LOADERS = {  # folder under root -> loader
    "imagenet-a": load_imagenet_a,
    "objectnet": lambda root, **kw: load_objectnet(root, accept_license=True, **kw),
    "omnibenchmark": load_omnibenchmark,
    "vtab": load_vtab,
    "vtab-cil/vtab": load_vtab,
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("folder", sorted(LOADERS))
def test_split_folder_benchmarks_read_as_imagefolder(folder, tmp_path):
    """Class ids are positions in the case-sensitive sorted folder names, as torchvision's ImageFolder; the
    split is the archive's; nothing is written under root."""
    names = ["b_class", "A_class", "a_class"]  # sorted case-sensitively: A_class, a_class, b_class
    make_split_folders(tmp_path, folder, class_names=names, n_train=3, n_test=2)
    (tmp_path / folder / "train" / "a_class" / "notes.txt").write_text("not an image")
    before = snapshot(tmp_path)
    pair = LOADERS[folder](str(tmp_path), expected_classes=3)
    assert pair.train.classes == ["A_class", "a_class", "b_class"] and pair.split == "pilot-zip"
    assert len(pair.train) == 9 and len(pair.test) == 6
    for source in (pair.train, pair.test):
        for path, label in zip(source.paths, source.labels, strict=True):
            assert Path(path).parent.name == source.classes[label]
    assert pair.train.image(0).mode == "RGB"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("loader, folder, licence", [
    (load_imagenet_a, "imagenet-a", "research use only"),
    (load_omnibenchmark, "omnibenchmark", "CC BY-NC-ND 4.0"),
    (load_vtab, "vtab", "research use only"),
    (lambda root: load_objectnet(root, accept_license=True), "objectnet", "may never be used to tune"),
])
def test_a_missing_benchmark_names_its_layout_source_and_licence(loader, folder, licence, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        loader(str(tmp_path))
    message = str(err.value)
    assert f"{folder}/\n" in message and "train/<class>/*.jpg" in message and "test/<class>/*.jpg" in message
    assert "Licence:" in message and licence in message
    assert ".zip" in message or ".tgz" in message  # the archive's name and MD5


def test_objectnet_is_refused_without_the_licence_accepted(tmp_path):
    make_split_folders(tmp_path, "objectnet", num_classes=2)
    with pytest.raises(LicenseNotAcceptedError, match=r"(?s)may never be used to tune.*dataset.accept_license=true"):
        load_objectnet(str(tmp_path))
    assert load_objectnet(str(tmp_path), accept_license=True, expected_classes=2).train.num_classes == 2


def test_train_and_test_must_hold_the_same_classes(tmp_path):
    base = make_split_folders(tmp_path, "imagenet-a", num_classes=3)
    for f in (base / "test" / "n01440074").iterdir():
        f.unlink()
    (base / "test" / "n01440074").rmdir()
    with pytest.raises(DatasetFileError, match="need the same class folders"):
        load_imagenet_a(str(tmp_path), expected_classes=3)


def test_a_partly_unpacked_benchmark_is_refused(tmp_path):
    make_split_folders(tmp_path, "imagenet-a", num_classes=3)
    with pytest.raises(DatasetFileError, match="holds 3 class folders, expected 200"):
        load_imagenet_a(str(tmp_path))


def test_verify_checks_the_archives_md5(tmp_path, monkeypatch, caplog):
    make_split_folders(tmp_path, "imagenet-a", num_classes=2)
    with caplog.at_level(logging.WARNING):
        assert verify_archive(IMAGENET_A, str(tmp_path)) is False
    assert "ina.zip is not there to be checked" in caplog.text
    (tmp_path / "ina.zip").write_bytes(b"an archive")
    with pytest.raises(DatasetFileError, match="7f4aaf0b1532b7a0bd670822c152d3c5"):
        load_imagenet_a(str(tmp_path), verify=True, expected_classes=2)
    import norga.data.imagenet_a as module

    good = module.IMAGENET_A.__class__(**{**module.IMAGENET_A.__dict__,
                                          "md5": hashlib.md5(b"an archive").hexdigest()})
    monkeypatch.setattr(module, "IMAGENET_A", good)
    assert load_imagenet_a(str(tmp_path), verify=True, expected_classes=2).train.num_classes == 2


def test_cub_in_pilots_layout(tmp_path):
    make_split_folders(tmp_path, "cub", class_names=["001.Albatross", "002.Auklet"], n_train=3, n_test=2)
    before = snapshot(tmp_path)
    for layout in ("auto", "pilot"):
        pair = load_cub200(str(tmp_path), layout=layout)
        assert pair.split == "pilot-zip" and pair.train.classes == ["001.Albatross", "002.Auklet"]
        assert (len(pair.train), len(pair.test)) == (6, 4)
    assert snapshot(tmp_path) == before
    with pytest.raises(DatasetNotFoundError, match=r"(?s)CUB_200_2011.*cub/train/<class>"):
        load_cub200(str(tmp_path), layout="official")
    make_cub(tmp_path)  # with the official folder too, auto takes it
    assert load_cub200(str(tmp_path)).split == "official"


def test_imagenet_r_in_pilots_layout(tmp_path):
    make_split_folders(tmp_path, "imagenet-r", num_classes=3, n_train=4, n_test=1)
    before = snapshot(tmp_path)
    pair = load_imagenet_r(str(tmp_path), cache_dir=str(tmp_path.parent / f"{tmp_path.name}-cache"))
    assert pair.split == "train-test-folders" and (len(pair.train), len(pair.test)) == (12, 3)
    assert snapshot(tmp_path) == before


def make_domainnet(root: Path, coda: bool) -> Path:
    """``DomainNet/<domain>/<class>/*.jpg`` with CODA-Prompt's YAML lists (paths as written from the repo's
    root) or the official ``<domain>_{train,test}.txt`` lists."""
    base = root / "DomainNet"
    make = {"train": [], "test": []}
    for domain in ("clipart", "sketch"):
        for k, cls in enumerate(("aircraft_carrier", "zebra", "apple")):
            for i, split in enumerate(("train", "train", "test")):
                rel = f"{domain}/{cls}/{domain}_{k:03d}_{i:06d}.jpg"
                make_split_folders(root / "tmp", "x", class_names=["c"], n_train=1, n_test=0)
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / "tmp" / "x" / "train" / "c" / "c_0.jpg").rename(base / rel)
                make[split].append((domain, rel, k))
    for split, rows in make.items():
        if coda:
            doc = {"data": [f"data/DomainNet/{rel}" for _, rel, _ in rows], "targets": [k for _, _, k in rows]}
            (base / f"domainnet_{split}.yaml").write_text(yaml.safe_dump(doc))
        else:
            for domain in ("clipart", "sketch"):
                lines = [f"{rel} {k}" for d, rel, k in rows if d == domain]
                (base / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("coda", [True, False])
def test_domainnet_from_its_split_files(coda, tmp_path):
    make_domainnet(tmp_path, coda)
    before = snapshot(tmp_path / "DomainNet")
    kw = {} if coda else {"domains": ["clipart", "sketch"]}
    pair = load_domainnet(str(tmp_path), expected_classes=3, **kw)
    assert pair.split == ("coda-yaml" if coda else "official-txt")
    assert pair.train.classes == ["aircraft_carrier", "zebra", "apple"]  # named by the lists' class ids
    assert (len(pair.train), len(pair.test)) == (12, 6)
    for path, label in zip(pair.train.paths, pair.train.labels, strict=True):
        assert os.path.isfile(path) and Path(path).parent.name == pair.train.classes[label]
    assert snapshot(tmp_path / "DomainNet") == before


def test_domainnet_missing_names_layout_source_and_licence(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)DomainNet/.*domainnet_train.yaml.*M3SDA.*Licence"):
        load_domainnet(str(tmp_path))
    (tmp_path / "DomainNet").mkdir()
    with pytest.raises(DatasetNotFoundError, match="domainnet_train.yaml"):
        check_files({"_target_": "norga.data.domainnet.load_domainnet", "root": str(tmp_path)})


def test_every_run_logs_its_image_counts(tmp_path, caplog):
    make_split_folders(tmp_path, "vtab", num_classes=4, n_train=3, n_test=2)
    cfg = OmegaConf.create({"name": "vtab", "num_tasks": 2, "shuffle": False, "class_order": "numpy_1993",
                            "source": {"_target_": "norga.data.vtab.load_vtab",
                                                           "root": str(tmp_path), "expected_classes": 4}})
    with caplog.at_level(logging.INFO, logger="norga"):
        b = build_benchmark(cfg, 32, seed=42)
    assert "dataset vtab: 4 classes, train 12 images, test 8 images, split pilot-zip; 2 tasks (B0Inc2), " \
           "class order identity" in caplog.text
    assert b.data_split == "pilot-zip"


@pytest.mark.parametrize("num_tasks, split", [(5, "B0Inc40"), (10, "B0Inc20"), (20, "B0Inc10"), (40, "B0Inc5")])
def test_imagenet_r_in_5_10_20_40_tasks(num_tasks, split, tmp_path):
    make_split_folders(tmp_path, "imagenet-r", num_classes=200, n_train=1, n_test=1)
    cfg = OmegaConf.create({"name": "imr", "num_tasks": num_tasks, "shuffle": True,
                            "class_order": "numpy_1993",
                            "source": {"_target_": "norga.data.imagenet_r.load_imagenet_r", "root": str(tmp_path),
                                       "cache_dir": str(tmp_path.parent / "cache"), "expected_classes": 200}})
    b = build_benchmark(cfg, 32, seed=42)
    assert b.num_tasks == num_tasks and b.split_name == split and b.task_classes[0][:3] == [168, 136, 51]


def test_imagenet_r_verify_checks_pilots_archive(tmp_path, caplog):
    make_split_folders(tmp_path, "imagenet-r", num_classes=2, n_train=2, n_test=1)
    (tmp_path / "imagenet-r.zip").write_bytes(b"not the archive")
    with pytest.raises(DatasetFileError, match="730aa3fb9c7d2ec0b6381c6b23040681"):
        load_imagenet_r(str(tmp_path), cache_dir=str(tmp_path.parent / "c"), verify=True)


def test_building_an_objectnet_benchmark_without_the_licence_is_refused_as_itself(tmp_path):
    """Through Hydra's instantiate (as a run builds it), the refusal surfaces as itself, naming the licence."""
    make_split_folders(tmp_path, "objectnet", num_classes=2)
    cfg = OmegaConf.create({"name": "objectnet", "num_tasks": 1, "shuffle": True,
                            "source": {"_target_": "norga.data.objectnet.load_objectnet", "root": str(tmp_path),
                                       "expected_classes": 2}})
    with pytest.raises(LicenseNotAcceptedError, match="ObjectNet may never be used to tune"):
        build_benchmark(cfg, 32, seed=0)
