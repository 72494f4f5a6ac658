"""Datasets whose licence restricts what a run does with them: refused unless the user accepts the terms.

Import-light (no torch): the preflight checks this before a run or a sweep builds anything."""

from __future__ import annotations

from typing import Any

from norga.errors import ConfigError

OBJECTNET_LOADER = "norga.data.objectnet.load_objectnet"
OBJECTNET_LICENSE = (
    "CC BY 4.0 with two added clauses (https://objectnet.dev/download.html): \"1. ObjectNet may never be used to "
    "tune the parameters of any model. 2. Any individual images from ObjectNet may only be posted to the web "
    "including their 1 pixel red border.\"")


class LicenseNotAcceptedError(ConfigError):
    """A dataset whose licence restricts what a run does with it, used without the user's explicit opt-in."""


def check_objectnet_license(accept_license: bool) -> None:
    """Refuse ObjectNet unless ``dataset.accept_license=true``."""
    if not accept_license:
        raise LicenseNotAcceptedError(
            f"dataset=objectnet is refused: ObjectNet's licence is {OBJECTNET_LICENSE}\nA class-incremental run "
            "trains (tunes the parameters of) a model on its images, which clause 1 forbids. The LAMDA-family "
            "papers report it anyway; to do the same, accept the licence yourself with "
            "dataset.accept_license=true (the run then records license_accepted: true in metrics.json). Nothing "
            "was read or written.")


def check_terms(source: Any) -> None:
    """Refuse a ``dataset.source`` node whose licence forbids what a run does unless it says ``accept_license``
    (set from ``dataset.accept_license``): a ConfigError naming the licence and why."""
    if source and source.get("_target_") == OBJECTNET_LOADER:
        check_objectnet_license(bool(source.get("accept_license")))
