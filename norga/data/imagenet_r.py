"""ImageNet-R from its class-folder tree, split 80/20 per class into a cached file list.

The reference splits the folder at random with the global RNG and moves the files on disk. Here the
split is a pure function of the sorted file list (fixed seed, stratified by class), written to a JSON
file in ``cache_dir`` keyed by a hash of that list, and nothing inside ``root`` is touched. A folder the
reference code has already split (``imagenet-r/{train,test}/<wnid>/``) is read with that split; the log says
which split a run uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .errors import dataset_not_found
from .source import FileSource, SourcePair
from .split_folder import SplitFolderDataset, verify_archive

log = logging.getLogger(__name__)
IMR_PILOT = SplitFolderDataset(
    name="ImageNet-R (PILOT's split)", folders=("imagenet-r",), source="imagenet-r.zip (link: LAMDA-PILOT README)",
    license="research use", archive="imagenet-r.zip", md5="730aa3fb9c7d2ec0b6381c6b23040681")
IMR_TAR = SplitFolderDataset(name="ImageNet-R", folders=("imagenet-r",), source="imagenet-r.tar",
                             license="research use", archive="imagenet-r.tar", md5=None)

FOLDER = "imagenet-r"
SPLIT_SEED = 1993  # a constant, not the run seed: every machine and every run gets the same split
SPLIT_VERSION = 1  # bump when the splitting rule changes, so old cache files are not reused
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar (unpack it inside root)"
_TREE = (f"{FOLDER}/\n  n01443537/ *.jpg\n  n01484850/\n  ... (200 class folders)\n"
         f"or a pre-split copy: {FOLDER}/train/<wnid>/*.jpg and {FOLDER}/test/<wnid>/*.jpg (PILOT's imagenet-r.zip, "
         "md5 730aa3fb9c7d2ec0b6381c6b23040681, read with its split)")


def default_cache_dir() -> str:
    return os.environ.get("NORGA_CACHE_DIR") or os.path.join(".cache", "norga")


def list_files(base: str) -> tuple[list[str], dict[str, list[str]]]:
    """Sorted class folders and, for each, its sorted image file names."""
    classes = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    files = {
        c: sorted(
            e.name for e in os.scandir(os.path.join(base, c))
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        for c in classes
    }
    return classes, files


def split_key(classes: list[str], files: dict[str, list[str]], train_fraction: float) -> str:
    """Hash of the rule and of the sorted file list: any change to the folder gives a new key."""
    h = hashlib.sha256(f"v{SPLIT_VERSION}\n{SPLIT_SEED}\n{train_fraction!r}\n".encode())
    for c in classes:
        for name in files[c]:
            h.update(f"{c}/{name}\n".encode())
    return h.hexdigest()[:20]


def stratified_split(
    classes: list[str], files: dict[str, list[str]], train_fraction: float
) -> dict[str, list[str]]:
    """Per class: sorted names, shuffled with a constant seed, first round(fraction * n) to train."""
    split: dict[str, list[str]] = {"train": [], "test": []}
    for k, c in enumerate(classes):
        names = files[c]
        # One generator per class keeps a class's split independent of the classes before it.
        order = np.random.default_rng([SPLIT_SEED, k]).permutation(len(names))
        n_train = int(np.floor(train_fraction * len(names) + 0.5))  # round half up, not to even
        split["train"].extend(f"{c}/{names[i]}" for i in order[:n_train])
        split["test"].extend(f"{c}/{names[i]}" for i in order[n_train:])
    return split


def _check_outside(cache_dir: Path, root: str) -> None:
    try:
        cache_dir.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return
    raise ValueError(f"cache_dir {cache_dir} lies inside the dataset root {root}; norga never writes there")


def _write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)  # concurrent runs each write a whole file; the last one wins
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_split(
    classes: list[str], files: dict[str, list[str]], cache_dir: str | os.PathLike, train_fraction: float
) -> dict[str, list[str]]:
    """The train/test file lists (``<wnid>/<file>``), read from the cache or computed and cached."""
    key = split_key(classes, files, train_fraction)
    cache_path = Path(cache_dir) / f"imagenet-r-split-{key}.json"
    if cache_path.is_file():
        try:
            with open(cache_path) as f:
                cached = json.load(f)
            split = {"train": list(cached["train"]), "test": list(cached["test"])}
            log.info("ImageNet-R: norga's split (%d train, %d test; stratified, seed %d), read from %s",
                     len(split["train"]), len(split["test"]), SPLIT_SEED, cache_path)
            return split
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"ignoring unreadable split cache {cache_path}: {err}", stacklevel=2)
    split = stratified_split(classes, files, train_fraction)
    log.info("ImageNet-R: norga's split (%d train, %d test; stratified, seed %d), saved to %s",
             len(split["train"]), len(split["test"]), SPLIT_SEED, cache_path)
    record = {"version": SPLIT_VERSION, "seed": SPLIT_SEED, "train_fraction": train_fraction, **split}
    try:
        _write_json_atomic(cache_path, record)
    except OSError as err:
        warnings.warn(f"could not cache the ImageNet-R split in {cache_path}: {err}", stacklevel=2)
    return split


def _premade_split(base: str) -> tuple[list[str], dict[str, list[str]]] | None:
    """A ``train/`` + ``test/`` layout, as left by the reference code after it moved the files."""
    if not all(os.path.isdir(os.path.join(base, s)) for s in ("train", "test")):
        return None
    # The reference code moves the images class by class, then deletes the class folders: class folders
    # with images beside train/ and test/ mean it stopped half-way, and either split would miss images.
    classes, files = list_files(base)
    left = [c for c in classes if c not in ("train", "test") and files[c]]
    if left:
        raise ValueError(
            f"{base} holds train/ and test/ (the reference code's split) and also {len(left)} class folders "
            f"with images (e.g. {left[0]}): the reference code was interrupted while moving the files. "
            "Unpack imagenet-r.tar again in its place (norga splits it without moving anything).")
    class_sets = [set(list_files(os.path.join(base, s))[0]) for s in ("train", "test")]
    classes = sorted(class_sets[0] | class_sets[1])
    split: dict[str, list[str]] = {}
    for s in ("train", "test"):
        _, files = list_files(os.path.join(base, s))
        split[s] = [f"{s}/{c}/{name}" for c in classes for name in files.get(c, [])]
    return classes, split


def locate_imagenet_r(root: str) -> str:
    """The imagenet-r folder; DatasetNotFoundError unless it holds class folders."""
    root = os.path.expanduser(os.fspath(root))
    base = os.path.join(root, FOLDER)
    has_classes = os.path.isdir(base) and any(e.is_dir() for e in os.scandir(base))
    if not has_classes:
        raise dataset_not_found("ImageNet-R", root, base, _TREE, _URL, [FOLDER + "/<class folders>"])
    return base


def load_imagenet_r(
    root: str,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    train_fraction: float = 0.8,
    expected_classes: int | None = None,
    verify: bool = False,
) -> SourcePair:
    """ImageNet-R from ``<root>/imagenet-r/<wnid>/*`` (or ``imagenet-r/{train,test}/<wnid>/*``, the reference
    code's split, used as it is): class ids follow the sorted folder names.

    The split is cached in ``cache_dir`` (default ``$NORGA_CACHE_DIR`` or ``.cache/norga``), which must
    lie outside ``root``. ``expected_classes`` (e.g. 200) guards against a partly unpacked folder.
    There is no checksummed downloader, so ``download`` changes nothing.
    """
    root = os.path.expanduser(os.fspath(root))
    base = locate_imagenet_r(root)
    cache_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    _check_outside(cache_dir, root)
    premade = _premade_split(base)
    if verify:  # the pre-split archive's MD5 (PILOT's imagenet-r.zip); the .tar has none published
        verify_archive(IMR_PILOT if premade is not None else IMR_TAR, root)
    if premade is not None:
        classes, split = premade
        # A warning: results on the reference code's random split are not comparable with norga's split.
        log.warning(
            "ImageNet-R: using the split found in %s/train and %s/test (%d train, %d test images; the layout "
            "the reference code leaves after moving the files), not norga's deterministic one. Unpack "
            "imagenet-r.tar again for norga's split.", base, base, len(split["train"]), len(split["test"]))
    else:
        classes, files = list_files(base)
        split = cached_split(classes, files, cache_dir, train_fraction)
    if expected_classes is not None and len(classes) != expected_classes:
        raise ValueError(f"{base} holds {len(classes)} class folders, expected {expected_classes}")
    class_id = {c: k for k, c in enumerate(classes)}

    def source(rel_paths: list[str]) -> FileSource:
        # rel_paths are "<wnid>/<file>", or "<train|test>/<wnid>/<file>" in a premade split
        parts = [p.split("/") for p in rel_paths]
        return FileSource(
            [os.path.join(base, *q) for q in parts],
            [class_id[q[-2]] for q in parts],
            classes,
            "default",
        )

    # split ids of result labels: a pre-split copy (PILOT's imagenet-r.zip, or HiDe's moved files) or norga's
    return SourcePair(source(split["train"]), source(split["test"]),
                      split="train-test-folders" if premade is not None else "norga-stratified")
