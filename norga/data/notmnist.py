"""notMNIST (letters A-J) from its Train/Test class-folder trees of PNG files."""

from __future__ import annotations

import os
import warnings

from PIL import Image

from .errors import dataset_not_found
from .source import FileSource, SourcePair

FOLDER = "notMNIST"
LETTERS = tuple("ABCDEFGHIJ")
_SPLITS = {"train": "Train", "test": "Test"}
_URL = (
    "https://github.com/facebookresearch/Adversarial-Continual-Learning/raw/main/data/notMNIST.zip "
    "(the 5-Datasets version; unzip it inside root)"
)


def locate_notmnist(root: str) -> dict[str, str]:
    """The Train and Test folders; DatasetNotFoundError unless both hold all ten letter folders."""
    root = os.path.expanduser(os.fspath(root))
    dirs = {split: os.path.join(root, FOLDER, sub) for split, sub in _SPLITS.items()}
    missing = [
        os.path.join(FOLDER, _SPLITS[split], letter)
        for split, d in dirs.items()
        for letter in LETTERS
        if not os.path.isdir(os.path.join(d, letter))
    ]
    if missing:
        tree = f"{FOLDER}/\n  Train/\n    A/ *.png\n    ...\n    J/\n  Test/\n    A/ ... J/"
        raise dataset_not_found("notMNIST", root, os.path.join(root, FOLDER), tree, _URL, missing)
    return dirs


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def _read_split(folder: str) -> FileSource:
    paths, labels, broken = [], [], 0
    for label, letter in enumerate(LETTERS):
        letter_dir = os.path.join(folder, letter)
        for name in sorted(os.listdir(letter_dir)):
            path = os.path.join(letter_dir, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            # The published archive holds a few truncated files; decode each once to drop them here
            # rather than crash a training epoch later.
            if not _readable(path):
                broken += 1
                continue
            paths.append(path)
            labels.append(label)
    if broken:
        warnings.warn(f"notMNIST: skipped {broken} unreadable image(s) in {folder}", stacklevel=3)
    return FileSource(paths, labels, list(LETTERS), "default")


def load_notmnist(root: str, download: bool = False) -> SourcePair:
    """notMNIST from ``<root>/notMNIST/{Train,Test}/{A..J}/``; letter A is class 0.

    There is no checksummed downloader for it, so ``download`` changes nothing: a missing copy
    raises DatasetNotFoundError saying where to get it.
    """
    dirs = locate_notmnist(root)
    return SourcePair(_read_split(dirs["train"]), _read_split(dirs["test"]))
