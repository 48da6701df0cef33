"""CIFAR-10 and CIFAR-100 in the python format they are distributed in, read from a local folder
(never downloaded): `cifar-10-batches-py` (data_batch_1..5, test_batch, batches.meta) or
`cifar-100-python` (train, test, meta), or a folder holding one of them. The pickles are plain
dicts of lists, bytes and numpy arrays; they are read with an unpickler that builds nothing else.
The images stay uint8 (CIFAR-10's test set: 30 MB)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from .source import DataError, Source, file_digest

CIFAR10 = {"meta": "batches.meta", "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
           "labels": "labels", "names": "label_names"}  # fmt: skip
CIFAR100 = {"meta": "meta", "train": ["train"], "test": ["test"], "labels": "fine_labels", "names": "fine_label_names"}
SUBFOLDERS = ("cifar-10-batches-py", "cifar-100-python")

# what CIFAR's pickles hold besides dicts, lists, numbers and strings: numpy arrays (written by
# numpy 1 as numpy.core.multiarray, by numpy 2 as numpy._core.multiarray); a copy re-pickled by
# Python 3 at protocol 2 spells bytes as _codecs.encode(text, "latin1")
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to build {module}.{name} (a CIFAR file holds only numpy arrays)")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_pickle(path: str) -> dict:
    """One CIFAR pickle as a dict with str keys (Python 2's str read as latin-1, as numpy's
    arrays in it need), or DataError naming the file."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (a CIFAR folder needs it)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable CIFAR pickle ({reason})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict, found {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def cifar_layout(path: str) -> tuple[str, dict] | None:
    """(the folder with the pickles, its layout) when `path` is a CIFAR folder or holds one."""
    for folder in (path, *(os.path.join(path, sub) for sub in SUBFOLDERS)):
        for layout in (CIFAR10, CIFAR100):
            if os.path.isfile(os.path.join(folder, layout["meta"])) and (
                os.path.isfile(os.path.join(folder, layout["test"][0]))
                or os.path.isfile(os.path.join(folder, layout["train"][0]))
            ):
                return folder, layout
    return None


class CifarSource(Source):
    """One split ("train" or "test") of the CIFAR folder `path`: uint8 [3, 32, 32] images,
    int64 labels (CIFAR-100: the fine labels), the class names from the meta file."""

    def __init__(self, path: str, split: str = "test"):
        from .. import checks as check

        check.choice("split", split, ("train", "test"))
        found = cifar_layout(path)
        if found is None:
            raise DataError(f"{path}: not a CIFAR folder (expected batches.meta and test_batch, or meta and test)")
        folder, layout = found
        self.name, self.split = folder, split
        meta = read_pickle(os.path.join(folder, layout["meta"]))
        names = meta.get(layout["names"])
        if not isinstance(names, list) or not names:
            raise DataError(f"{os.path.join(folder, layout['meta'])}: no '{layout['names']}' list")
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        images, labels, self._files = [], [], [os.path.join(folder, layout["meta"])]
        for file in layout[split]:
            file_path = os.path.join(folder, file)
            batch = read_pickle(file_path)
            data, batch_labels = batch.get("data"), batch.get(layout["labels"])
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{file_path}: 'data' must be a uint8 array [N, 3072] (3 x 32 x 32, channel-major)")
            if not isinstance(batch_labels, (list, np.ndarray)) or len(batch_labels) != data.shape[0]:
                raise DataError(f"{file_path}: '{layout['labels']}' must list one label per image ({data.shape[0]})")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch_labels, dtype=np.int64))
            self._files.append(file_path)
        self.images = np.concatenate(images) if len(images) > 1 else images[0]
        self.labels = np.concatenate(labels)
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"{folder}: labels must be in 0..{len(self.classes) - 1} ({len(self.classes)} classes)")
        if not len(self.labels):
            raise DataError(f"{folder}: the {split} split holds no samples")

    def read(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index]))

    def describe(self, index: int) -> str:
        return f"{self.name} ({self.split} image {index})"

    def _identity(self) -> bytes:
        digest = None
        for file in self._files:  # the pickles themselves: CIFAR's are 30 MB each, read in chunks
            digest = file_digest(file, digest)
        return digest.digest()
