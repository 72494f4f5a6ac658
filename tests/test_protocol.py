"""The ``protocol`` config group: ``hide`` (the default, today's choices) and ``pilot`` (LAMDA-PILOT's class
order, B{init}Inc{inc} tasks, transforms without normalisation), each choice overridable on its own."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision import transforms as T

from norga.config import register, validate
from norga.data import ArraySource, Benchmark, SourcePair, build_transform
from norga.data.protocol import class_order, order_label, split_name, task_sizes
from tests.learning import CONF

# The first twelve entries, as RCIL's SimpleCIL logs print them for C = 100, 200, 300 (345: computed);
# numpy_1993 gives them whatever the run seed
FIRST = {
    100: [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89],
    200: [168, 136, 51, 9, 183, 101, 171, 99, 42, 159, 191, 70],
    300: [169, 221, 146, 296, 92, 229, 49, 70, 126, 77, 243, 57],
    345: [214, 80, 343, 268, 224, 97, 253, 55, 165, 170, 14, 305],
}


@pytest.mark.parametrize("num_classes", sorted(FIRST))
def test_pilot_order_is_numpy_randomstate_1993(num_classes):
    order = class_order(num_classes, "numpy_1993", seed=7)
    assert order[:12] == FIRST[num_classes]
    assert sorted(order) == list(range(num_classes))
    if num_classes == 200:
        assert order[-3:] == [177, 185, 161]
    assert order_label("numpy_1993", 7) == "np-seed-1993"


def test_hide_order_is_pythons_shuffle_with_the_run_seed():
    for seed in (40, 42, 44):
        expected = list(range(100))
        random.Random(seed).shuffle(expected)
        assert class_order(100, "seeded", seed) == expected
    assert class_order(50, "numpy_1993", 1, shuffle=False) == list(range(50))
    assert order_label("numpy_1993", 1, shuffle=False) == "identity"


def test_b_init_inc_task_sizes_follow_pilots_rule():
    assert task_sizes(200, None, 0, 20) == [20] * 10 and split_name([20] * 10) == "B0Inc20"
    assert task_sizes(100, None, 50, 10) == [50, 10, 10, 10, 10, 10]
    assert split_name(task_sizes(100, None, 50, 10)) == "B50Inc10"
    assert task_sizes(300, None, 0, 70) == [70, 70, 70, 70, 20]  # the remainder is a last, smaller task
    assert task_sizes(345, 5, None, 69) == [69] * 5
    assert task_sizes(200, 10) == [20] * 10  # no increment: num_tasks equal tasks, as before
    with pytest.raises(ValueError, match=r"dataset.num_tasks=10, but B0Inc30 .* makes 7 tasks"):
        task_sizes(200, 10, 0, 30)
    with pytest.raises(ValueError, match="cannot be split into 7 tasks"):
        task_sizes(200, 7)


def _pair(num_classes: int, per_class: int = 2) -> SourcePair:
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.zeros((len(labels), 8, 8), dtype=np.uint8)
    classes = [str(c) for c in range(num_classes)]
    return SourcePair(ArraySource(images, labels, classes, "digits"), ArraySource(images, labels, classes, "digits"))


def test_benchmark_with_unequal_tasks():
    b = Benchmark(_pair(100), num_tasks=6, seed=42, class_order="numpy_1993", init_classes=50, increment=10)
    assert [len(c) for c in b.task_classes] == [50, 10, 10, 10, 10, 10] and b.split_name == "B50Inc10"
    assert b.task_classes[0][:3] == [68, 56, 78]
    assert [c for cs in b.task_classes for c in cs] == b.class_order
    assert len(b.test_set(1)) == 20 and int(b.class_to_task[68]) == 0


def _compose(*overrides: str):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=none", *overrides])
    validate(cfg)
    return cfg


def test_hide_is_the_default_and_keeps_todays_choices():
    cfg = _compose()
    assert cfg.protocol == "hide"
    d = cfg.dataset
    assert (d.class_order, dict(d.transform_as), d.init_classes, d.increment, d.normalize) == (
        "seeded", {}, None, None, "recipe")


def test_pilot_sets_its_choices_and_each_stays_overridable():
    d = _compose("protocol=pilot").dataset
    assert (d.class_order, dict(d.transform_as), d.normalize) == ("numpy_1993", {"cifar100": "default"}, "none")
    d = _compose("protocol=pilot", "dataset.class_order=seeded", "dataset.normalize=recipe",
                 "dataset.increment=1").dataset
    assert (d.class_order, d.normalize, d.increment) == ("seeded", "recipe", 1)


def test_vtab_keeps_its_order_under_pilot():
    cfg = _compose("protocol=pilot", "dataset=vtab")
    assert cfg.dataset.shuffle is False
    b = Benchmark(_pair(50), cfg.dataset.num_tasks, cfg.seed, cfg.dataset.shuffle,
                  class_order=cfg.dataset.class_order)
    assert b.class_order == list(range(50)) and b.order_label == "identity" and b.split_name == "B0Inc10"


def test_pilot_transforms_have_no_normalisation():
    """PILOT's build_transform: the same crop and test resize for CIFAR as for the others, inputs in [0, 1]."""
    d = _compose("protocol=pilot").dataset
    kind = dict(d.transform_as).get("cifar100", "cifar100")
    assert kind == "default"
    for train in (True, False):
        ops = build_transform(kind, 224, train, normalize=d.normalize).transforms
        assert not any(isinstance(op, T.Normalize | T.ColorJitter) for op in ops)
    test = build_transform(kind, 224, False).transforms
    assert isinstance(test[0], T.Resize) and test[0].size == 256 and test[0].interpolation.value == "bicubic"
    assert isinstance(test[1], T.CenterCrop) and test[1].size == (224, 224)
    train = build_transform(kind, 224, True).transforms
    assert isinstance(train[0], T.RandomResizedCrop) and train[0].scale == (0.05, 1.0)
    # the paper's recipe is unchanged: CIFAR keeps its normalisation unless normalize=none drops it
    assert isinstance(build_transform("cifar100", 224, False).transforms[-1], T.Normalize)
    digits = build_transform("digits", 32, False, [0.5] * 3, [0.5] * 3, normalize="none")
    assert not any(isinstance(op, T.Normalize) for op in digits.transforms)
    from PIL import Image

    x = digits(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert torch.all(x <= 1.0) and torch.all(x >= 0.0)


def test_a_run_recorded_before_protocols_resumes_as_hide():
    """A resume compares configs: keys a run recorded before protocols never had take their hide values."""
    from omegaconf import OmegaConf

    from norga.engine.record import config_differences
    from norga.protocol_defaults import with_protocol_defaults

    new = OmegaConf.to_container(_compose("dataset=cub", "paths.data_dir=/data"), resolve=True)
    old = {k: v for k, v in new.items() if k != "protocol"}
    old["dataset"] = {k: v for k, v in new["dataset"].items() if k in ("name", "root", "num_tasks", "shuffle")}
    old["dataset"]["source"] = {k: v for k, v in new["dataset"]["source"].items() if k not in ("layout", "verify")}
    assert config_differences(old, new), "without the defaults, the old record differs"
    assert config_differences(with_protocol_defaults(old), new) == []
    pilot = OmegaConf.to_container(_compose("dataset=cub", "paths.data_dir=/data", "protocol=pilot"), resolve=True)
    assert "dataset.class_order" in config_differences(with_protocol_defaults(old), pilot)


def test_normalize_backbone_normalises_every_family_with_the_backbones_statistics():
    for kind in ("default", "cifar100"):
        last = build_transform(kind, 32, False, [0.5] * 3, [0.25] * 3, normalize="backbone").transforms[-1]
        assert isinstance(last, T.Normalize) and tuple(last.mean) == (0.5,) * 3 and tuple(last.std) == (0.25,) * 3
