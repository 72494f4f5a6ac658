"""MNIST and Fashion-MNIST from torchvision's raw idx files (plain or .gz)."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from .errors import DatasetNotFoundError, dataset_file_error, dataset_not_found
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


def read_idx(path: str, name: str = "MNIST", source: str = "") -> np.ndarray:
    """Read an idx file of unsigned bytes (gzip-compressed when the name ends in .gz).

    ``name`` (the dataset) and ``source`` (where intact files come from) go into the
    :class:`DatasetFileError` raised for a damaged file.
    """
    expected = "an idx file of unsigned bytes (magic 0x00000801/0x00000803), plain or gzip-compressed"
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # a damaged .gz: BadGzipFile (an OSError), EOF, CRC errors
        raise dataset_file_error(name, path, expected, err, source) from err
    # Magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or not 1 <= data[3] <= 3:
        magic = data[:4].hex() or "absent: the file is empty"
        raise dataset_file_error(name, path, expected, f"it is not an unsigned-byte idx file (magic {magic})", source)
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise dataset_file_error(name, path, expected, f"its header is cut short ({len(data)} bytes)", source)
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    size = int(np.prod(shape))
    if len(data) - offset != size:
        problem = f"the header says {shape} ({size} bytes) but {len(data) - offset} follow"
        raise dataset_file_error(name, path, expected, problem, source)
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
    _, name, url, classes = _VARIANTS[fashion]
    splits = []
    for split in ("train", "test"):
        image_file, label_file = files[f"{split}_images"], files[f"{split}_labels"]
        images, labels = read_idx(image_file, name, url), read_idx(label_file, name, url)
        if images.ndim != 3:
            raise dataset_file_error(name, image_file, "an idx file of N images (3 dimensions)",
                                     f"it holds an array of shape {images.shape}", url)
        problem = ""
        if labels.ndim != 1 or len(labels) != len(images):
            problem = f"it holds an array of shape {labels.shape}"
        elif labels.size and labels.max() >= len(classes):
            problem = f"it holds labels up to {labels.max()}"
        if problem:
            expected = f"an idx file of {len(images)} labels 0..{len(classes) - 1}, one per image of {image_file}"
            raise dataset_file_error(name, label_file, expected, problem, url)
        splits.append(ArraySource(images, labels, classes, "default"))
    return SourcePair(*splits)


def load_fashion_mnist(root: str, download: bool = False) -> SourcePair:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw``."""
    return load_mnist(root, download, fashion=True)
