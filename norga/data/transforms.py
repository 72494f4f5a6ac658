"""Image transforms, one family per ``transform_kind``; at input 224 they are exactly the paper's."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

BICUBIC = InterpolationMode.BICUBIC
CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)


def _test_resize(size: int) -> list:
    # 256 for 224: the usual resize-then-centre-crop ratio, scaled with the input size.
    return [T.Resize(int(size * 256 / 224), interpolation=BICUBIC), T.CenterCrop(size)]


def _cifar100(size: int, train: bool, mean, std) -> list:
    if train:
        head = [
            T.RandomResizedCrop(size, interpolation=BICUBIC),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=63 / 255),
        ]
    else:
        head = _test_resize(size)
    return [*head, T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]


def _default(size: int, train: bool, mean, std) -> list:
    # Faithful to the reference: no normalisation at all for the non-CIFAR datasets.
    if train:
        head = [
            T.RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)),
            T.RandomHorizontalFlip(p=0.5),
        ]
    else:
        head = _test_resize(size)
    return [*head, T.ToTensor()]


def _digits(size: int, train: bool, mean, std) -> list:
    # 8x8 digits are upsampled straight to the input size; no flips, digits are not mirror-symmetric.
    ops = [T.Resize(size, interpolation=BICUBIC)]
    if train:
        ops += [
            T.RandomAffine(degrees=10, translate=(0.05, 0.05)),
            T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=BICUBIC),
        ]
    ops.append(T.ToTensor())
    if mean is not None and std is not None:
        ops.append(T.Normalize(tuple(mean), tuple(std)))
    return ops


_KINDS: dict[str, Callable[[int, bool, Sequence[float] | None, Sequence[float] | None], list]] = {
    "cifar100": _cifar100,
    "default": _default,
    "digits": _digits,
}
TRANSFORM_KINDS = tuple(_KINDS)


NORMALIZE = ("recipe", "none", "backbone")


def build_transform(
    kind: str,
    input_size: int,
    train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalize: str = "recipe",
) -> T.Compose:
    """PIL image -> float tensor (3, input_size, input_size) for one transform family.

    ``cifar100``: the paper's CIFAR transform (its own fixed normalisation; CIFAR-10 uses it too).
    ``default``: the paper's transform for ImageNet-R, CUB and 5-Datasets (no normalisation).
    ``digits``: for the embedded 8x8 digits; normalised with ``mean``/``std`` (the backbone's) when given.
    ``mean``/``std`` are ignored by the two paper families, whose normalisation is part of the recipe.

    ``normalize``: ``recipe`` keeps each family's own,
    ``none`` drops every ``Normalize`` (inputs in [0, 1]), ``backbone`` normalises every family with
    ``mean``/``std``.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"dataset.normalize={normalize!r} is not an option; choose one of {', '.join(NORMALIZE)}")
    try:
        make = _KINDS[kind]
    except KeyError:
        known = ", ".join(TRANSFORM_KINDS)
        raise ValueError(f"unknown transform kind {kind!r}; known kinds: {known}") from None
    ops = make(int(input_size), bool(train), mean, std)
    if normalize != "recipe":
        ops = [op for op in ops if not isinstance(op, T.Normalize)]
        if normalize == "backbone":
            if mean is None or std is None:
                raise ValueError("dataset.normalize=backbone needs the backbone's mean and std")
            ops.append(T.Normalize(tuple(mean), tuple(std)))
    return T.Compose(ops)
