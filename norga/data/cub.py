"""CUB-200-2011 from its official folder (index files plus images/)."""

from __future__ import annotations

import os

import numpy as np

from .errors import dataset_not_found
from .source import FileSource, SourcePair

FOLDER = "CUB_200_2011"
_INDEX_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt")
_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz (unpack it inside root)"
_TREE = f"""{FOLDER}/
  images.txt              <image id> <path under images/>
  train_test_split.txt    <image id> <1 = train, 0 = test>
  image_class_labels.txt  <image id> <class id, 1-based>
  classes.txt             <class id> <name>
  images/001.Black_footed_Albatross/*.jpg ..."""


def _read_index(path: str) -> dict[int, str]:
    """``<int id> <value>`` per line; the value may contain spaces."""
    table: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            key, sep, value = line.partition(" ")
            if not sep:
                raise ValueError(f"{path}:{line_no}: expected '<id> <value>', got {line!r}")
            table[int(key)] = value.strip()
    return table


def locate_cub(root: str) -> str:
    """The CUB_200_2011 folder; DatasetNotFoundError unless its index files and images/ are there."""
    root = os.path.expanduser(os.fspath(root))
    base = os.path.join(root, FOLDER)
    missing = [os.path.join(FOLDER, f) for f in _INDEX_FILES if not os.path.isfile(os.path.join(base, f))]
    if not os.path.isdir(os.path.join(base, "images")):
        missing.append(os.path.join(FOLDER, "images/"))
    if missing:
        raise dataset_not_found("CUB-200-2011", root, base, _TREE, _URL, missing)
    return base


def load_cub200(root: str, download: bool = False) -> SourcePair:
    """CUB-200-2011 with its official train/test split; class ids are the file's 1-based ids minus one.

    There is no checksummed downloader for it, so ``download`` changes nothing.
    """
    root = os.path.expanduser(os.fspath(root))
    base = locate_cub(root)
    index = {name: _read_index(os.path.join(base, name)) for name in _INDEX_FILES}
    images, is_train, labels, class_names = (index[n] for n in _INDEX_FILES)
    if not (images.keys() == is_train.keys() == labels.keys()):
        raise ValueError(
            f"{base}: images.txt, train_test_split.txt and image_class_labels.txt list different ids"
        )
    class_ids = sorted(class_names)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise ValueError(f"{base}/classes.txt: class ids must run 1..N, got {class_ids[:3]}...")
    # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    classes = [class_names[k].split(".", 1)[-1] for k in class_ids]

    ids = sorted(images)
    paths = [os.path.join(base, "images", images[i]) for i in ids]
    absent = [os.path.relpath(p, root) for p in paths if not os.path.isfile(p)]
    if absent:
        # A copy rearranged by the reference code (images moved into train/ and test/) ends up here too.
        raise dataset_not_found("CUB-200-2011", root, base, _TREE, _URL, absent)
    y = np.array([int(labels[i]) - 1 for i in ids], dtype=np.int64)
    train = np.array([is_train[i].strip() == "1" for i in ids])
    paths_arr = np.array(paths, dtype=object)
    return SourcePair(
        FileSource(list(paths_arr[train]), y[train], classes, "default"),
        FileSource(list(paths_arr[~train]), y[~train], classes, "default"),
    )
