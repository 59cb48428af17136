"""Batches of (uint8 images, targets, mask) for training and inference.

The dataset is indexed by *batches* (lists of row indices), so reading the prepared cache is
one fancy-indexed memmap copy per batch instead of one Python call per image; without a cache,
each image of the batch is decoded from its file.
"""

from __future__ import annotations

import numpy as np
import torch

from chexcut.data.cache import ImageCache
from chexcut.data.chexpert import LabelTable
from chexcut.data.images import load_image


class XrayBatches(torch.utils.data.Dataset):
    """``ds[[i, j, ...]] -> (uint8 (B, 1, S, S), targets (B, L), mask (B, L), rows (B,))``."""

    def __init__(self, table: LabelTable, image_size: int, resize: str = "squash", cache: ImageCache | None = None):
        self.table = table
        self.image_size = image_size
        self.resize = resize
        self.cache = cache
        self.cache_rows = cache.rows(table.files) if cache is not None else None
        self.targets = torch.from_numpy(table.targets)
        self.mask = torch.from_numpy(table.mask)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if self.cache is not None:
            cr = self.cache_rows[rows]
            order = np.argsort(cr, kind="stable")  # sequential memmap reads
            images = np.empty((len(rows), self.image_size, self.image_size), dtype=np.uint8)
            images[order] = self.cache.images[cr[order]]
        else:
            images = np.stack([load_image(self.table.files[i], self.image_size, self.resize) for i in rows])
        idx = torch.from_numpy(rows)
        return torch.from_numpy(images).unsqueeze(1), self.targets[idx], self.mask[idx], idx


def batch_order(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, drop_last: bool = False,
                rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of one epoch: a permutation seeded by (seed, epoch), split across ranks.

    Deterministic, so a resumed run replays exactly the batches it would have seen.
    """
    if shuffle:
        g = np.random.default_rng([seed, epoch])
        perm = g.permutation(n)
    else:
        perm = np.arange(n)
    if world > 1:  # pad to a multiple of world so every rank takes the same number of steps
        total = -(-n // world) * world
        perm = np.concatenate([perm, perm[: total - n]])
        perm = perm[rank::world]
    batches = [perm[i:i + batch_size].tolist() for i in range(0, len(perm), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def make_loader(ds: XrayBatches, batches: list[list[int]], workers: int, pin: bool):
    """A DataLoader over precomputed batches (batch_size=None: the dataset builds each batch)."""
    kw = {}
    if workers > 0:
        kw = {"num_workers": workers, "persistent_workers": False, "prefetch_factor": 4}
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=batches, pin_memory=pin, **kw)
