"""MNIST and Fashion-MNIST from torchvision's raw idx files (plain or .gz)."""

from __future__ import annotations

import gzip
import os

import numpy as np

from .errors import DatasetNotFoundError, dataset_not_found
from .source import ArraySource, SourcePair

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08

_VARIANTS = {
    # folder under root (torchvision's class name), display name, source, class names
    False: (
        "MNIST",
        "MNIST",
        "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)",
        [f"{d} - {w}" for d, w in enumerate(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])],
    ),
    True: (
        "FashionMNIST",
        "Fashion-MNIST",
        "https://github.com/zalandoresearch/fashion-mnist (files at "
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/)",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"],
    ),
}


def read_idx(path: str) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzip-compressed when the name ends in .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    # Magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or not 1 <= data[3] <= 3:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes) but {len(data) - offset} follow")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(raw: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        path = os.path.join(raw, candidate)
        if os.path.isfile(path):
            return path
    return None


def locate_mnist(root: str, fashion: bool = False) -> dict[str, str]:
    """Paths of the four idx files; DatasetNotFoundError if any is missing."""
    root = os.path.expanduser(os.fspath(root))
    folder, name, url, _ = _VARIANTS[fashion]
    raw = os.path.join(root, folder, "raw")
    found = {key: _find(raw, f) for key, f in _FILES.items()}
    missing = [os.path.join(folder, "raw", _FILES[k]) for k, p in found.items() if p is None]
    if missing:
        tree = "\n".join([f"{folder}/", "  raw/"] + [f"    {f}[.gz]" for f in _FILES.values()])
        raise dataset_not_found(name, root, raw, tree, url, missing, torchvision_download=True)
    return found  # type: ignore[return-value]


def download_mnist(root: str, fashion: bool = False) -> None:
    """Fetch the files with torchvision (which checks their md5s) into ``<root>/<folder>/raw``."""
    import torchvision.datasets as tvd

    (tvd.FashionMNIST if fashion else tvd.MNIST)(root, train=True, download=True)


def load_mnist(root: str, download: bool = False, fashion: bool = False) -> SourcePair:
    """MNIST (or Fashion-MNIST with ``fashion=True``) from ``<root>/<MNIST|FashionMNIST>/raw``.

    Images stay 28x28 grey in memory and come out RGB.
    """
    root = os.path.expanduser(os.fspath(root))
    try:
        files = locate_mnist(root, fashion)
    except DatasetNotFoundError:
        if not download:
            raise
        download_mnist(root, fashion)
        files = locate_mnist(root, fashion)
    classes = _VARIANTS[fashion][3]
    splits = []
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"])
        labels = read_idx(files[f"{split}_labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{split} idx files disagree: images {images.shape}, labels {labels.shape}")
        splits.append(ArraySource(images, labels, classes, "default"))
    return SourcePair(*splits)


def load_fashion_mnist(root: str, download: bool = False) -> SourcePair:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw``."""
    return load_mnist(root, download, fashion=True)
