"""Deterministic stratified splits, for the sources that ship without a train/test split."""

from __future__ import annotations

import numpy as np

# Every deterministic split in this package draws from this seed through the
# legacy RandomState, whose stream NumPy keeps frozen across releases, so a
# split made today is the split made by any later NumPy.
_SPLIT_SEED = 0


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = _SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class contributes round(test_fraction * count) to test.

    The results are shuffled with the same generator, so that a prefix of the
    test set (``x_test[:100]``) is not one class when the source is sorted by class.
    """
    rng = np.random.RandomState(seed)
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members)))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train = rng.permutation(np.concatenate(train_parts)) if train_parts else np.zeros(0, np.int64)
    test = rng.permutation(np.concatenate(test_parts)) if test_parts else np.zeros(0, np.int64)
    return train.astype(np.int64), test.astype(np.int64)
