"""DataLoader construction in one place, so workers, pinning and seeding are consistent everywhere."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def worker_options(device: torch.device, num_workers: int) -> dict:
    """DataLoader options shared by every loader: pinned memory when feeding a GPU, prefetching workers."""
    return {"num_workers": num_workers, "pin_memory": device.type == "cuda", "persistent_workers": False,
            "prefetch_factor": 4 if num_workers > 0 else None}


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A loader whose shuffling (and worker seeds) come from ``generator``, pinned when feeding a GPU."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        **worker_options(device, num_workers),
    )
