"""DomainNet as a class-incremental benchmark: 345 classes, images of every domain mixed within each task.

Read in place from ``<root>/DomainNet/`` (or ``domainnet/``): the domain folders ``<domain>/<class>/*`` and a
split given by file lists, either

* CODA-Prompt's ``domainnet_train.yaml`` / ``domainnet_test.yaml`` (``data``: image paths, ``targets``: class
  ids), which InfLoRA reuses: split id ``coda-yaml``; or
* the official per-domain lists ``<domain>_train.txt`` / ``<domain>_test.txt`` (``<domain>/<class>/<file>
  <class id>`` per line): split id ``official-txt``.

A path in a list is found under the DomainNet folder from its domain component on, whatever prefix the list's
author ran from (``data/DomainNet/clipart/...``). Class names are the class folders of the paths.
"""

from __future__ import annotations

import os

from .errors import DatasetFileError, dataset_file_error, dataset_not_found
from .source import FileSource, SourcePair

FOLDERS = ("DomainNet", "domainnet")
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
SPLIT_FILES = ("auto", "coda", "official")
CODA_FILES = ("domainnet_train.yaml", "domainnet_test.yaml")
_NAME = "DomainNet (class-incremental, 345 classes)"
_SOURCE = ("images and official lists: http://ai.bu.edu/M3SDA/ (the cleaned version: per-domain zips and "
           "<domain>_{train,test}.txt); CODA-Prompt's split files: dataloaders/splits/domainnet_{train,test}.yaml "
           "in https://github.com/GT-RIPL/CODA-Prompt\nLicence: not stated on the dataset's page: research use only")
_TREE = """DomainNet/
  clipart/<class>/*.jpg  infograph/  painting/  quickdraw/  real/  sketch/
  domainnet_train.yaml, domainnet_test.yaml   (CODA-Prompt's split, split_files=coda)
  or clipart_train.txt, clipart_test.txt, ... (the official lists, split_files=official)"""


def locate_domainnet(root: str, split_files: str = "auto", split_dir: str | None = None) -> tuple[str, str, str]:
    """(DomainNet folder, ``coda`` or ``official``, folder of the split files); DatasetNotFoundError naming the
    layout, the source and the licence when they are not there."""
    if split_files not in SPLIT_FILES:
        raise ValueError(f"dataset.source.split_files={split_files!r} is not an option; choose one of "
                         f"{', '.join(SPLIT_FILES)}")
    root = os.path.expanduser(os.fspath(root))
    base = next((os.path.join(root, f) for f in FOLDERS if os.path.isdir(os.path.join(root, f))), None)
    if base is None:
        raise dataset_not_found(_NAME, root, os.path.join(root, FOLDERS[0]), _TREE, _SOURCE, [FOLDERS[0] + "/"])
    lists = os.path.expanduser(split_dir) if split_dir else base
    coda = all(os.path.isfile(os.path.join(lists, f)) for f in CODA_FILES)
    official = any(os.path.isfile(os.path.join(lists, f"{d}_train.txt")) for d in DOMAINS)
    if split_files in ("auto", "coda") and coda:
        return base, "coda", lists
    if split_files in ("auto", "official") and official:
        return base, "official", lists
    wanted = {"coda": list(CODA_FILES), "official": ["<domain>_train.txt", "<domain>_test.txt"],
              "auto": [*CODA_FILES, "or <domain>_{train,test}.txt"]}[split_files]
    raise dataset_not_found(_NAME, root, lists, _TREE, _SOURCE, [os.path.join(lists, w) for w in wanted])


def _read_yaml(path: str) -> tuple[list[str], list[int]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the files are over 4 MiB: the C parser if built
    expected = "a YAML mapping with 'data' (image paths) and 'targets' (class ids) of equal length"
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader
        paths, targets = [str(p) for p in doc["data"]], [int(t) for t in doc["targets"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise dataset_file_error(_NAME, path, expected, err, _SOURCE.splitlines()[0]) from err
    if len(paths) != len(targets):
        raise dataset_file_error(_NAME, path, expected, f"{len(paths)} paths, {len(targets)} targets")
    return paths, targets


def _read_txt(path: str) -> tuple[list[str], list[int]]:
    expected = "lines '<domain>/<class>/<file> <class id>'"
    paths, targets = [], []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise dataset_file_error(_NAME, path, expected, err) from err
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        if not rel or not label.isdigit():
            raise dataset_file_error(_NAME, path, expected, f"line {n} is {line[:80]!r}")
        paths.append(rel)
        targets.append(int(label))
    return paths, targets


def _resolve(base: str, listed: str, list_file: str) -> tuple[str, str]:
    """(path under ``base``, class name) of a listed path, from its domain component on."""
    parts = listed.replace("\\", "/").split("/")
    at = next((i for i, p in enumerate(parts) if p in DOMAINS), None)
    if at is None or at + 2 >= len(parts):
        raise dataset_file_error(_NAME, list_file, "paths '<...>/<domain>/<class>/<file>'",
                                 f"{listed!r} names no domain of {', '.join(DOMAINS)}")
    return os.path.join(base, *parts[at:]), parts[at + 1]


def load_domainnet(root: str, download: bool = False, split_files: str = "auto", split_dir: str | None = None,
                   domains: list[str] | None = None, expected_classes: int | None = 345,
                   verify: bool = False) -> SourcePair:
    """DomainNet from ``<root>/DomainNet/`` with CODA-Prompt's split (``split_files=coda``) or the official
    lists of ``domains`` (default all six; ``split_files=official``); ``auto`` takes CODA's when there.
    ``split_dir``: where the split files are, if not in the DomainNet folder. No downloader, no published
    MD5 (``download`` and ``verify`` change nothing)."""
    base, kind, lists = locate_domainnet(root, split_files, split_dir)
    splits: dict[str, tuple[list[str], list[int], list[str]]] = {}
    for s in ("train", "test"):
        if kind == "coda":
            path = os.path.join(lists, f"domainnet_{s}.yaml")
            paths, targets = _read_yaml(path)
            files = [path] * len(paths)
        else:
            paths, targets, files = [], [], []
            for d in domains or DOMAINS:
                path = os.path.join(lists, f"{d}_{s}.txt")
                if not os.path.isfile(path):
                    raise dataset_not_found(_NAME, root, path, _TREE, _SOURCE, [path])
                p, t = _read_txt(path)
                paths, targets, files = paths + p, targets + t, files + [path] * len(p)
        splits[s] = (paths, targets, files)
    names: dict[int, str] = {}
    resolved: dict[str, list[str]] = {}
    for s, (paths, targets, files) in splits.items():
        resolved[s] = []
        for listed, target, file in zip(paths, targets, files, strict=True):
            path, name = _resolve(base, listed, file)
            if names.setdefault(target, name) != name:
                raise dataset_file_error(_NAME, file, "one class folder per class id",
                                         f"class id {target} is {names[target]!r} and {name!r}")
            resolved[s].append(path)
    num = max(names) + 1 if names else 0
    if sorted(names) != list(range(num)) or (expected_classes is not None and num != expected_classes):
        raise DatasetFileError(f"{_NAME}: the split files of {lists} name {len(names)} class ids (0..{num - 1}), "
                               f"expected {expected_classes}; replace them with the original files.", lists)
    absent = [p for s in resolved.values() for p in s if not os.path.isfile(p)]
    if absent:
        raise dataset_not_found(_NAME, root, base, _TREE, _SOURCE, [os.path.relpath(p, root) for p in absent])
    classes = [names[k] for k in range(num)]
    pair = [FileSource(resolved[s], splits[s][1], classes, "default") for s in ("train", "test")]
    return SourcePair(pair[0], pair[1], split="coda-yaml" if kind == "coda" else "official-txt")
