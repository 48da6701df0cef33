"""What every data set of fastadv.data is: a `torch.utils.data.Dataset` of (image, label) whose
images stay uint8 (or float32 in [0, 1]) until they reach the device, whose labels are known
without reading an image, and whose identity (for resuming) is a digest computed without
reading the whole data set into memory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


class DataError(ValueError):
    """A data file is missing, unreadable or holds arrays of the wrong shape, type or range."""


class BadSample(Exception):
    """One sample cannot be read (a corrupt image): `Source.item` reports it instead of raising,
    so that one bad file is named, or skipped, the same way with and without worker processes."""


@dataclass(frozen=True)
class Item:
    """One sample as a worker hands it over: the image (None when it could not be read, then
    `error` says why), its label, and its position in the data set."""

    image: torch.Tensor | None
    label: int
    position: int
    error: str | None = None


class Source(torch.utils.data.Dataset):
    """A data set of images with integer labels.

    Subclasses set `name` (the file or folder, for messages), `labels` (int64 numpy array, one
    per sample), `classes` (names, or None) and `skip_bad` (bad images are left out and listed
    instead of stopping the run), and implement `read(i)` (a uint8 [C, H, W] tensor, or float32
    in [0, 1]; raises BadSample), `describe(i)` (the sample's file, for messages) and
    `_identity()` (bytes that change when the data changes)."""

    name: str = "data"
    labels: np.ndarray
    classes: list[str] | None = None
    skip_bad: bool = False
    skipped: tuple[str, ...] = ()  # files left out while indexing (with skip_bad)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def _identity(self) -> bytes:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item:
        label = int(self.labels[index])
        try:
            return Item(self.read(index), label, index)
        except BadSample as error:
            return Item(None, label, index, f"{self.describe(index)}: {error}")

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what the data set is made of (files' names, sizes and modification
        times, array headers, labels, the resize), never of every image decoded."""
        digest = hashlib.sha256(type(self).__name__.encode())
        digest.update(self._identity())
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def class_count(self) -> int:
        """The number of classes: the named ones, else the largest label + 1."""
        return len(self.classes) if self.classes else int(self.labels.max()) + 1


def file_digest(path: str, digest=None):
    """A running SHA-256 over a file's bytes, read in chunks of 16 MiB (memory stays bounded)."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest


class TensorSource(Source):
    """In-memory tensors (images [N, C, H, W] floating in [0, 1] or uint8, labels [N]) on any
    device: batches are sliced, no worker is needed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "data"):
        self.images, self.tensor_labels, self.name = images, labels.long(), name
        self.labels = labels.detach().cpu().long().numpy()

    def read(self, index: int) -> torch.Tensor:
        return self.images[index]

    def _identity(self) -> bytes:  # pragma: no cover - evaluate and fit digest the tensors themselves
        raise NotImplementedError("the tensors' fingerprint is checkpoint.fingerprint's")
