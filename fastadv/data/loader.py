"""Batches of a Selection on their way to the device: read by torch.utils.data worker processes
(decoded there, kept uint8), pinned and copied without blocking when the device is a GPU, the
next batches prefetched while the current one is attacked, scaled to [0, 1] once on the device.
In-memory tensors are sliced instead (no worker). The stream times how long its consumer waits."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .selection import Selection
from .source import DataError, Item, TensorSource

PREFETCH_FACTOR = 4  # batches each worker keeps ready


def default_workers() -> int:
    """Worker processes when none are asked for: one per CPU this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def workers_for(data: Selection, workers: int | None) -> int:
    """The worker processes to read `data` with: `workers` (a non-negative int; ValueError
    otherwise), default_workers() when None, 0 for tensors in memory (they are sliced)."""
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    if isinstance(data.source, TensorSource):
        return 0
    return default_workers() if workers is None else workers


@dataclass
class Batch:
    """One batch on the device: its number, images (floating, [0, 1]), int64 labels, and the
    samples of it that could not be read ("file: why", left out with skip_bad)."""

    index: int
    x: torch.Tensor
    y: torch.Tensor
    bad: list[str]


def collate(items: list[Item]) -> tuple[torch.Tensor | None, torch.Tensor, list[str], int]:
    """A worker's batch: the readable images stacked (as read: uint8 stays uint8), their labels,
    the errors of the others, and the first sample's position."""
    good = [item for item in items if item.image is not None]
    bad = [item.error for item in items if item.image is None]
    x = stack([item.image for item in good]) if good else None
    y = torch.tensor([item.label for item in good], dtype=torch.int64)
    return x, y, bad, items[0].position if items else 0


class BatchStream:
    """Iterates `Batch`es of `data` for `batches` = [(batch number, positions in data), ...] on
    `device` with `workers` processes (0: read in this process). `waited` is the seconds the
    consumer spent waiting for batches, `seconds` the seconds from the first request to the end."""

    def __init__(self, data: Selection, batches: Sequence[tuple[int, Sequence[int]]], device: torch.device,
                 workers: int = 0):  # fmt: skip
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
        self.data, self.batches, self.device, self.workers = data, list(batches), torch.device(device), workers
        self.waited = self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        start = time.perf_counter()
        source = self.data.source
        if isinstance(source, TensorSource):
            produced = (self._sliced(source, number, positions) for number, positions in self.batches)
        else:
            produced = self._loaded()
        iterator = iter(produced)
        try:
            while True:
                asked = time.perf_counter()
                batch = next(iterator, None)
                self.waited += time.perf_counter() - asked
                if batch is None:
                    break
                yield batch
                # let go of it before reading the next one: otherwise two batches (and the
                # consumer's copies of them) are alive at once, the peak memory of the run
                batch = None
        finally:
            self.seconds = time.perf_counter() - start

    def _sliced(self, source: TensorSource, number: int, positions: Sequence[int]) -> Batch:
        if self.data.indices is None and isinstance(positions, range) and positions.step == 1:
            index: slice | torch.Tensor = slice(positions.start, positions.stop)
        else:
            index = torch.as_tensor([self.data.index(p) for p in positions], dtype=torch.long)
        x = source.images[index]
        y = source.tensor_labels[index.to(source.tensor_labels.device) if isinstance(index, torch.Tensor) else index]
        return Batch(number, _scaled(x.to(self.device)), y.to(self.device), [])

    def _loaded(self) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            self.data, batch_sampler=_Positions(self.batches), num_workers=self.workers,
            collate_fn=collate, pin_memory=cuda, prefetch_factor=PREFETCH_FACTOR if self.workers else None,
        )  # fmt: skip
        source = self.data.source
        for (number, _), (x, y, bad, first) in zip(self.batches, loader, strict=True):
            if bad and not source.skip_bad:
                raise DataError(f"{bad[0]} (skip_bad, --skip-bad-images in the CLI, leaves such files out)")
            if x is None:  # every sample of the batch was bad
                x = torch.zeros(0)
            elif hasattr(source, "check_values"):
                source.check_values(x, self.data.index(first))
            yield Batch(number, _scaled(x.to(self.device, non_blocking=cuda)), y.to(self.device, non_blocking=cuda),
                        bad)  # fmt: skip
            x = y = None  # the uint8 batch, not kept while the loader reads the next one


class _Positions:
    """The loader's batch sampler: each batch's positions made a list when the loader asks for it,
    not a list of every position up front (a Python int per sample, built before the workers fork)."""

    def __init__(self, batches: Sequence[tuple[int, Sequence[int]]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return (list(positions) for _, positions in self.batches)


def stack(images: list[torch.Tensor]) -> torch.Tensor:
    """`images` stacked; in a worker process straight into shared memory, as torch's default_collate
    does. Stacked into ordinary memory, a worker's batch is copied into shared memory when the
    queue's feeder thread sends it, and its heap block freed there while the worker decodes the
    next batch into the same heap: glibc often left the freed blocks unreused (in one worker or
    both, depending on timing, the free heap grew by one batch per batch, 47 MiB a worker over
    24,000 32x32 images, while the memory in use stayed flat), so the memory a run held grew with
    the number of images it read. Straight into shared memory there is no such block, and no copy."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(images)
    first = images[0]
    storage = first._typed_storage()._new_shared(sum(image.numel() for image in images), device=first.device)
    return torch.stack(images, out=first.new(storage).resize_(len(images), *first.shape))


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1] (x / 255, once, where x is); floating ones as they are."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def first_images(data: Selection, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` readable samples of `data` (fewer if it has fewer), read in this
    process, as (float images in [0, 1], int64 labels) on the CPU: what a model is checked with
    and what example figures show. DataError when none is readable."""
    source = data.source
    if isinstance(source, TensorSource):
        batch = next(iter(BatchStream(data, [(0, range(min(count, len(data))))], torch.device("cpu"))))
        return batch.x, batch.y
    items, errors = [], []
    for position in range(len(data)):
        item = data[position]
        if item.image is None:
            errors.append(item.error)
            if not source.skip_bad:
                break
        else:
            items.append(item)
        if len(items) == count:
            break
    if errors and not source.skip_bad or not items:
        raise DataError(f"{errors[0]} (skip_bad, --skip-bad-images in the CLI, leaves such files out)" if errors
                        else f"{source.name}: no readable sample")  # fmt: skip
    x, y, _, first = collate(items)
    if hasattr(source, "check_values"):  # NaN or out-of-range floating images, as the stream refuses them
        source.check_values(x, data.index(first))
    return _scaled(x), y
