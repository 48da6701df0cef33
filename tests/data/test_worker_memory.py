"""What DataLoader worker processes hold stays flat in the number of images they read: a worker
stacks its batch straight into the shared memory it is sent through (no heap block per batch,
freed by the queue's thread: glibc often left those unreused, and a worker's heap grew by one
batch per batch, depending on timing, so a test cannot count it), and what a data
set hands the forked workers holds no Python object per image (whose reference counts and
collector headers, touched in a worker, copy their pages). Counted, never timed;
benchmarks/bench_eval_memory.py measures the process tree's PSS."""

from __future__ import annotations

import gc

import numpy as np
import torch

from fastadv.data import ImageFolderSource, Source, select
from fastadv.data.loader import collate
from fastadv.data.source import Item


class _Noise(Source):
    """`count` uint8 3x32x32 images made on read (a folder's images, without the files)."""

    def __init__(self, count: int):
        self.labels = (np.arange(count) % 10).astype(np.int64)

    def read(self, index: int) -> torch.Tensor:
        return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(index))

    def _identity(self) -> bytes:
        return b"noise"


def _collated_in_shared_memory(items: list[Item]):
    x, y, _, _ = collate(items)
    return x.is_shared(), x, y


def test_a_worker_stacks_its_batch_in_shared_memory():
    data = select(_Noise(24))
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=1, collate_fn=_collated_in_shared_memory)
    batches = list(loader)
    assert [shared for shared, _, _ in batches] == [True, True, True]
    expected = torch.stack([data[i].image for i in range(24)])
    assert torch.equal(torch.cat([x for _, x, _ in batches]), expected)
    assert torch.cat([y for _, _, y in batches]).tolist() == data.labels.tolist()
    # in this process (no worker) a batch is an ordinary tensor
    assert not collate([data[i] for i in range(8)])[0].is_shared()


def _tracked_reachable(root) -> int:
    """gc-tracked objects reachable from `root` (what a forked worker's collector writes to)."""
    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type) or type(obj).__name__ == "module":
            continue
        seen.add(id(obj))
        stack.extend(o for o in gc.get_referents(obj) if gc.is_tracked(o))
    return len(seen)


def _folder(root, files: int) -> str:
    from PIL import Image

    Image.new("RGB", (4, 4), (10, 200, 10)).save(root / "one.png")
    png = (root / "one.png").read_bytes()
    for i in range(files):
        folder = root / "images" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png)
    return str(root / "images")


def test_what_the_workers_inherit_holds_no_python_object_per_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small, large = ImageFolderSource(_folder(tmp_path / "a", 30)), ImageFolderSource(_folder(tmp_path / "b", 600))
    assert _tracked_reachable(select(small)) == _tracked_reachable(select(large))
    chosen = (select(small, subset=20, shuffle_seed=1), select(large, subset=500, shuffle_seed=1))
    assert _tracked_reachable(chosen[0]) == _tracked_reachable(chosen[1])
