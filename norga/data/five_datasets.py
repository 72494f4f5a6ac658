"""5-Datasets: SVHN, MNIST, CIFAR-10, notMNIST, Fashion-MNIST as one 50-class dataset."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from functools import partial

from . import cifar, mnist, notmnist, svhn
from .errors import DatasetNotFoundError, combine
from .source import ConcatSource, SourcePair

PARTS = ("SVHN", "MNIST", "CIFAR10", "NotMNIST", "FashionMNIST")

# name -> (locate, can torchvision download it, load); all five live side by side under one root.
_PARTS: dict[str, tuple[Callable[[str], object], bool, Callable[[str, bool], SourcePair]]] = {
    "SVHN": (svhn.locate_svhn, True, svhn.load_svhn),
    "MNIST": (mnist.locate_mnist, True, mnist.load_mnist),
    "CIFAR10": (cifar.locate_cifar10, True, cifar.load_cifar10),
    "NotMNIST": (notmnist.locate_notmnist, False, notmnist.load_notmnist),
    "FashionMNIST": (partial(mnist.locate_mnist, fashion=True), True, mnist.load_fashion_mnist),
}


def part_order(seed: int) -> list[str]:
    """The five datasets in the order the tasks use, shuffled by ``seed`` as the reference does
    (``random.seed(seed); random.shuffle(['SVHN', 'MNIST', 'CIFAR10', 'NotMNIST', 'FashionMNIST'])``)."""
    order = list(PARTS)
    random.Random(seed).shuffle(order)
    return order


def load_five_datasets(root: str, download: bool = False, seed: int = 0, shuffle: bool = True) -> SourcePair:
    """The five datasets concatenated, 10 classes each, in ``part_order(seed)`` (fixed order if not shuffle).

    Class ids of a part are offset by the classes of the parts before it. Each image keeps its own
    dataset's transform kind: CIFAR-10 the CIFAR transform, the others the default one. (The reference
    loader has a defect: once CIFAR-10 comes up in the shuffled order, every later dataset gets the
    CIFAR transform too. That is deliberately not reproduced.)
    """
    root = os.path.expanduser(os.fspath(root))
    # Check all five before reading (or downloading) anything, so one error lists everything missing.
    errors = []
    for name in PARTS:
        locate, downloadable, _ = _PARTS[name]
        try:
            locate(root)
        except DatasetNotFoundError as err:
            if download and downloadable:
                continue
            errors.append(err)
    if errors:
        raise combine(errors)

    order = part_order(seed) if shuffle else list(PARTS)
    pairs = [_PARTS[name][2](root, download) for name in order]
    names = [name.lower() for name in order]
    return SourcePair(
        ConcatSource([p.train for p in pairs], names),
        ConcatSource([p.test for p in pairs], names),
    )
