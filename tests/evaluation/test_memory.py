"""Evaluation memory is flat in the number of images: nothing of a batch outlives it,
the evaluation keeps no per-sample or per-batch state, and an image folder's index holds no
Python object per file. Counted (weak references, live tensors, traced bytes), never timed or
compared with a process's RSS; benchmarks/bench_data.py measures the RSS and PSS."""

from __future__ import annotations

import gc
import os
import tracemalloc
import weakref

import numpy as np
import torch

import fastadv
from fastadv.data import BatchStream, ImageFolderSource, Selection, Source
from fastadv.evaluation import evaluate

BATCH = 4


class _Spy(Source):
    """16x16 uint8 images read one by one (as a folder's are); before the first sample of every
    batch it records what is still alive of the batches before: `alive` (weak references to
    every tensor the model was called with that still resolve) and `tensors` (live tensors)."""

    def __init__(self, count: int, inputs: list, count_tensors: bool = False):
        self.labels = (np.arange(count) % 3).astype(np.int64)
        self.inputs, self.alive, self.tensors, self.count_tensors = inputs, [], [], count_tensors

    def read(self, index: int) -> torch.Tensor:
        if index % BATCH == 0 and index:
            self.alive.append(sum(ref() is not None for ref in self.inputs))
            if self.count_tensors:
                gc.collect()  # reachable is what counts, not a cycle the collector would free
                self.tensors.append(sum(type(o) in (torch.Tensor, torch.nn.Parameter) for o in gc.get_objects()))
            self.inputs.clear()
        generator = torch.Generator().manual_seed(index)
        return torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=generator)

    def _identity(self) -> bytes:
        return b"spy"


class _Recording(torch.nn.Module):
    """A small CNN (with BatchNorm) that keeps a weak reference to every input it is given."""

    def __init__(self, inputs: list):
        super().__init__()
        torch.manual_seed(0)
        nn = torch.nn
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 3))  # fmt: skip
        self.inputs = inputs

    def forward(self, x):
        self.inputs.append(weakref.ref(x))
        return self.net(x)


def test_nothing_of_a_batch_is_alive_when_the_next_is_read():
    # the images of the batch before (the clean batch, the attacks' copies and candidates) were
    # still referenced while the next was read (the loop's tqdm and the stream kept the last
    # batch): two batches in memory at once, the run's peak
    inputs: list = []
    source = _Spy(8 * BATCH, inputs)
    model = _Recording(inputs).eval()
    evaluate(model, source, ["fgsm", "pgd"], [0.05, 0.1], steps=2, batch_size=BATCH, workers=0, progress=True)
    assert len(source.alive) == 7
    assert source.alive == [0] * 7


def test_the_evaluation_keeps_no_state_per_batch():
    # live tensors at the start of batches 2 to 8 are the same: the report's sums
    # have a fixed size, nothing is appended per batch or per sample
    inputs: list = []
    source = _Spy(8 * BATCH, inputs, count_tensors=True)
    evaluate(_Recording(inputs).eval(), source, ["fgsm", "pgd"], [0.1], steps=2, batch_size=BATCH, workers=0,
             progress=False)  # fmt: skip
    assert len(source.tensors) == 7
    assert len(set(source.tensors[1:])) == 1, source.tensors


def test_the_stream_lets_go_of_a_batch_before_reading_the_next():
    inputs: list = []
    source = _Spy(4 * BATCH, inputs)
    batches = [(i, range(i * BATCH, (i + 1) * BATCH)) for i in range(4)]
    for batch in BatchStream(Selection(source), batches, torch.device("cpu"), workers=0):
        inputs.append(weakref.ref(batch.x))
        del batch
    assert source.alive == [0, 0, 0]


def _folder(root, files: int) -> str:
    """An image folder of `files` copies of one 4x4 PNG in two classes."""
    from PIL import Image

    Image.new("RGB", (4, 4), (200, 10, 10)).save(root / "one.png")
    png = (root / "one.png").read_bytes()
    for i in range(files):
        folder = root / "images" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"image_{i:05d}.png").write_bytes(png)
    return str(root / "images")


def _retained(path: str) -> tuple[int, ImageFolderSource]:
    """Bytes the index of `path` holds once built: the traced Python and numpy allocations made
    from fastadv's own code (where the index's arrays, or a list of paths, would be made). Pillow
    keeps a varying number of small objects from the first image it reads (1 to 284 of 59 bytes
    from run to run), which made a total over the whole process fail at random."""
    own = [tracemalloc.Filter(True, os.path.join(os.path.dirname(fastadv.__file__), "*"))]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(own)
        source = ImageFolderSource(path)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(own)
        return sum(stat.size_diff for stat in after.compare_to(before, "filename")), source
    finally:
        tracemalloc.stop()


def test_an_image_folder_index_holds_no_python_object_per_file(tmp_path):
    # a list of str costs a path's length plus about 57 bytes a file (object header, pointer),
    # again in every worker process that touches it; the index keeps the encoded bytes, an
    # 8-byte offset and the 8-byte label
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small, large = _folder(tmp_path / "a", 40), _folder(tmp_path / "b", 440)
    ImageFolderSource(small)  # Pillow's plugins and other first-use caches, not the index
    (small_bytes, _), (large_bytes, source) = _retained(small), _retained(large)
    path_length = len(os.fsencode(source.files[0]))
    per_file = (large_bytes - small_bytes) / 400
    assert per_file < path_length + 40, (per_file, path_length)
    assert source.files[7] == os.path.join(large, "class0", "image_00014.png")  # sorted per class
    assert source.files[-1] == os.path.join(large, "class1", "image_00439.png")
    assert len(source.files) == 440 and list(source.labels[:3]) == [0, 0, 0]
