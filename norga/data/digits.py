"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (no files needed)."""

from __future__ import annotations

import numpy as np

from .source import ArraySource, SourcePair

SPLIT_SEED = 0  # a constant, not the run seed: the test set is the same in every run


def load_digits(root: str | None = None, download: bool = False, train_fraction: float = 0.8) -> SourcePair:
    """1,797 grey 8x8 digits in 10 classes, split per class ``train_fraction`` / rest.

    ``root`` and ``download`` are accepted (and ignored) so every dataset config has the same shape.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixel values are 0..16 counts of a 4x4 block; stretch them to 0..255 bytes.
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    classes = [str(c) for c in bunch.target_names]

    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(np.floor(train_fraction * len(idx) + 0.5))
        train_idx.append(idx[:n_train])
        test_idx.append(idx[n_train:])
    train_idx = np.sort(np.concatenate(train_idx))
    test_idx = np.sort(np.concatenate(test_idx))
    return SourcePair(
        ArraySource(images[train_idx], labels[train_idx], classes, "digits"),
        ArraySource(images[test_idx], labels[test_idx], classes, "digits"),
    )
