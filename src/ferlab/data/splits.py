"""Train/val/test splits. The test split is reported, never used for any choice."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .readers import USAGES, DataError, FerData

SPLITS = ("official", "seed")


@dataclass
class Split:
    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64
    name: str
    votes: np.ndarray | None = None  # (N, 10) int8 FER+ votes of the same faces, -1 rows = none (data/ferplus.py)

    def __len__(self) -> int:
        return len(self.labels)


def make_splits(data: FerData, kind: str = "official", seed: int = 42, fraction: float = 1.0) -> dict[str, Split]:
    """Split FER2013 into train / val / test.

    official: train = Training, val = PublicTest, test = PrivateTest.
    seed:     the seed project's protocol: Training rows only, shuffled with `seed`, cut 70/15/15.
    fraction: keep this share of each split (stratified by nothing, fixed order) for quick runs.
    """
    if kind not in SPLITS:
        raise ValueError(f"unknown split {kind!r}; expected one of {', '.join(SPLITS)}")
    labeled = data.labels >= 0
    if kind == "official":
        idx = {name: np.flatnonzero(labeled & (data.usage == USAGES.index(u)))
               for name, u in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest"))}
    else:
        rows = np.flatnonzero(labeled & (data.usage == USAGES.index("Training")))
        rows = rows[np.random.default_rng(seed).permutation(len(rows))]
        a, b = int(0.70 * len(rows)), int(0.85 * len(rows))
        idx = {"train": rows[:a], "val": rows[a:b], "test": rows[b:]}
    out = {}
    for name, rows in idx.items():
        if fraction < 1.0:
            rows = rows[np.random.default_rng(seed + 1).permutation(len(rows))[:max(1, int(len(rows) * fraction))]]
        if len(rows) == 0:
            hint = " (this source has no PublicTest/PrivateTest rows; use split: seed)" if kind == "official" else ""
            raise DataError(f"{data.source}: the {name} split of the {kind!r} protocol is empty{hint}")
        out[name] = Split(data.images[rows], data.labels[rows].astype(np.int64), name,
                          None if data.votes is None else data.votes[rows])
    return out
