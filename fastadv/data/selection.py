"""Which samples of a data set a run reads, in which order: all of them, a seeded class-balanced
subset, a seeded shuffle, the first N. A Selection is itself a Dataset (of Items whose position
is the position in the selection), and its fingerprint covers the data and the choice."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .. import checks as check
from .source import Item, Source, TensorSource


class Selection(torch.utils.data.Dataset):
    """`source`'s samples at `indices` (None: all, in order)."""

    def __init__(self, source: Source, indices: np.ndarray | None = None):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else int(self.indices.shape[0])

    def index(self, position: int) -> int:
        return position if self.indices is None else int(self.indices[position])

    def __getitem__(self, position: int) -> Item:
        item = self.source[self.index(position)]
        return Item(item.image, item.label, position, item.error)

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels if self.indices is None else self.source.labels[self.indices]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.source.fingerprint().encode())
        if self.indices is not None:
            digest.update(np.ascontiguousarray(self.indices, dtype=np.int64).tobytes())
        return digest.hexdigest()


def select(data, *, limit: int | None = None, subset: int | None = None, shuffle_seed: int | None = None) -> Selection:
    """The samples of `data` (a Source or a Selection) a run reads:

    - subset N: N samples, class-balanced (each class N // K, or all it has, the rest spread
      over the classes that have more, in class order), drawn with a generator seeded by
      `shuffle_seed` (0 when None) and kept in the data set's order;
    - shuffle_seed S: a seeded permutation (of the subset, if any);
    - limit N: then the first N.

    Raises ValueError naming the argument (subset larger than the data set, say)."""
    selection = data if isinstance(data, Selection) else Selection(data)
    if limit is None and subset is None and shuffle_seed is None:
        return selection
    if limit is not None:
        check.positive_int("limit", limit)
    if shuffle_seed is not None and not (isinstance(shuffle_seed, int) and 0 <= shuffle_seed < 2**63):
        raise ValueError(f"shuffle_seed must be an integer in [0, 2**63 - 1], got {shuffle_seed!r}")
    positions = np.arange(len(selection), dtype=np.int64)
    if subset is not None:
        check.positive_int("subset", subset)
        if subset > len(selection):
            raise ValueError(f"subset: {subset} samples asked for, the data has {len(selection)}")
        positions = balanced(selection.labels, subset, shuffle_seed or 0)
    if shuffle_seed is not None:
        order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(shuffle_seed)).numpy()
        positions = positions[order]
    if limit is not None:
        positions = positions[:limit]
    base = selection.indices
    return Selection(selection.source, positions if base is None else base[positions])


def balanced(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` positions of `labels`, as even over the classes as their sizes allow, each class's
    drawn at random (seeded), sorted."""
    classes, sizes = np.unique(labels, return_counts=True)
    quota = np.zeros_like(sizes)
    left = count
    while left:  # water-filling: an equal share for each class that still has samples
        open_ = np.flatnonzero(quota < sizes)
        share = max(left // len(open_), 1)
        for k in open_:
            take = min(share, sizes[k] - quota[k], left)
            quota[k] += take
            left -= take
            if not left:
                break
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for k, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        order = torch.randperm(len(members), generator=generator).numpy()
        chosen.append(members[order[: quota[k]]])
    return np.sort(np.concatenate(chosen))


def as_selection(name: str, data) -> Selection:
    """`data` as a Selection: a pair (images [N, ...] floating in [0, 1], labels [N]) of tensors
    (checked; TypeError / ValueError naming `name`), a Source, or a Selection as it is."""
    if isinstance(data, Selection):
        return data
    if isinstance(data, Source):
        return Selection(data)
    images, labels = check.image_dataset(name, data)
    return Selection(TensorSource(images, labels))
