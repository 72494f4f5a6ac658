"""Transforms: the paper's recipes at 224, scaled versions elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from norga.data import TRANSFORM_KINDS, build_transform


def image(w=40, h=30, mode="RGB"):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).convert(mode)


def ops(kind, size, train, **kw):
    return build_transform(kind, size, train, **kw).transforms


@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_output_is_224_square_float(kind, train):
    x = build_transform(kind, 224, train)(image(8, 8) if kind == "digits" else image())
    assert x.dtype == torch.float32 and x.shape == (3, 224, 224)


def test_cifar100_is_the_papers_recipe_at_224():
    train = ops("cifar100", 224, True)
    assert [type(t) for t in train] == [
        T.RandomResizedCrop, T.RandomHorizontalFlip, T.ColorJitter, T.ToTensor, T.Normalize
    ]
    assert train[0].size == (224, 224) and train[0].interpolation == InterpolationMode.BICUBIC
    assert train[0].scale == (0.08, 1.0)
    assert train[2].brightness == (1 - 63 / 255, 1 + 63 / 255)
    assert tuple(train[4].mean) == (0.5071, 0.4867, 0.4408)
    assert tuple(train[4].std) == (0.2675, 0.2565, 0.2761)

    test = ops("cifar100", 224, False)
    assert [type(t) for t in test] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert test[0].size == 256 and test[0].interpolation == InterpolationMode.BICUBIC
    assert test[1].size == (224, 224)
    assert tuple(test[3].mean) == (0.5071, 0.4867, 0.4408)


def test_cifar100_ignores_backbone_stats():
    norm = ops("cifar100", 224, False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[-1]
    assert tuple(norm.std) == (0.2675, 0.2565, 0.2761)


def test_default_is_the_papers_recipe_at_224():
    train = ops("default", 224, True, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert [type(t) for t in train] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor]
    assert train[0].size == (224, 224)
    assert train[0].scale == (0.05, 1.0) and train[0].ratio == (3 / 4, 4 / 3)
    test = ops("default", 224, False)
    assert [type(t) for t in test] == [T.Resize, T.CenterCrop, T.ToTensor]
    assert test[0].size == 256 and test[0].interpolation == InterpolationMode.BICUBIC
    # no normalisation: values stay in [0, 1]
    x = build_transform("default", 224, False)(image())
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_sizes_scale_with_input_size():
    test = ops("default", 96, False)
    assert test[0].size == int(96 * 256 / 224) and test[1].size == (96, 96)
    assert build_transform("cifar100", 32, True)(image()).shape == (3, 32, 32)


def test_digits_no_flip_and_backbone_normalisation():
    train = ops("digits", 64, True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in train)
    assert isinstance(train[-1], T.Normalize) and tuple(train[-1].std) == (0.25, 0.25, 0.25)
    test = build_transform("digits", 64, False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    assert torch.allclose(test(white), torch.full((3, 64, 64), 2.0))
    assert not any(isinstance(t, T.Normalize) for t in ops("digits", 64, False))
    # evaluation is deterministic
    img = image(8, 8)
    assert torch.equal(test(img), test(img))


def test_unknown_kind_lists_known_ones():
    with pytest.raises(ValueError, match="cifar100, default, digits"):
        build_transform("imagenet", 224, True)
