"""Checks on the datasets of the LAMDA family that need no image read: are the files there (for the sweep's
preflight, one message for every missing dataset), and does the user accept the dataset's terms (ObjectNet)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from norga.licences import check_terms

from . import cub, cub_pilot, domainnet, imagenet_a, objectnet, omnibenchmark, split_folder, vtab


def _folders(spec: split_folder.SplitFolderDataset) -> Callable[[dict], Any]:
    return lambda source: split_folder.locate(spec, str(source.get("root", "")))


def _cub(source: dict) -> Any:
    root = os.path.expanduser(str(source.get("root", "")))
    if cub_pilot.choose_layout(source.get("layout", "auto"), root, cub.FOLDER) == "pilot":
        return split_folder.locate(cub_pilot.CUB_PILOT, root)
    return cub.locate_cub(root)


LOCATORS: dict[str, Callable[[dict], Any]] = {
    "norga.data.imagenet_a.load_imagenet_a": _folders(imagenet_a.IMAGENET_A),
    "norga.data.objectnet.load_objectnet": _folders(objectnet.OBJECTNET),
    "norga.data.omnibenchmark.load_omnibenchmark": _folders(omnibenchmark.OMNIBENCHMARK),
    "norga.data.vtab.load_vtab": _folders(vtab.VTAB),
    "norga.data.domainnet.load_domainnet": lambda source: domainnet.locate_domainnet(
        str(source.get("root", "")), source.get("split_files", "auto"), source.get("split_dir")),
    "norga.data.cub.load_cub200": _cub,
}


def check_files(source: dict) -> bool:
    """Raise DatasetNotFoundError when the files of a ``dataset.source`` node of these loaders are missing (a
    ConfigError when its licence is not accepted); False for a loader this module does not know."""
    check_terms(source)
    locate = LOCATORS.get(str(source.get("_target_", "")))
    if locate is None:
        return False
    locate(source)
    return True
