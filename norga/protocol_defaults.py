"""What a run recorded before the protocol keys existed meant (``protocol=hide``, as every run did then), so
that resuming it or comparing its config is not refused for keys it never had. Import-light (no torch): the
preflight reads it before anything is built."""

from __future__ import annotations

_DATASET_DEFAULTS = {"class_order": "seeded", "transform_as": {}, "init_classes": None, "increment": None,
                     "normalize": "recipe", "verify": False, "accept_license": False}
_SOURCE_DEFAULTS = {"norga.data.cub.load_cub200": {"layout": "auto", "verify": False},
                    "norga.data.imagenet_r.load_imagenet_r": {"verify": False}}


def with_protocol_defaults(recorded: dict | None) -> dict | None:
    """A resolved config recorded before the protocol keys existed, with the values those keys take for the
    same run today (``protocol=hide``), so that resuming such a run is not refused for keys it never had."""
    if not isinstance(recorded, dict) or "protocol" in recorded:
        return recorded
    out = {**recorded, "protocol": "hide"}
    dataset = recorded.get("dataset")
    if isinstance(dataset, dict):
        dataset = {**_DATASET_DEFAULTS, **dataset}
        source = dataset.get("source")
        if isinstance(source, dict):
            dataset["source"] = {**_SOURCE_DEFAULTS.get(source.get("_target_"), {}), **source}
        out["dataset"] = dataset
    return out
