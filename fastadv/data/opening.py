"""Opening a data set: the one that needs no download, and the front door to the streamed ones.

`digits` is scikit-learn's copy of the UCI handwritten digits (1797 grey images, ten classes;
8x8 originals, returned upsampled to 16x16), which ships inside the scikit-learn package, so it
loads offline in milliseconds.
`open_data` turns what a user points at ('digits', an image folder, a CIFAR folder, an .npz
file) into a streamed data set (a Source), `open_selection` also selects its samples; `load_npz` and
`image_folder` read one whole into tensors (for small sets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import checks as check
from .cifar import CifarSource, cifar_layout
from .folder import ImageFolderSource
from .loader import BatchStream
from .npz import NpzSource
from .selection import Selection, select
from .source import DataError, Source, TensorSource

DIGITS_SIZE = 16
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits as ``(images, labels)``.

    Images are float32 ``[N, 1, 16, 16]`` in [0, 1]: the 8x8 originals (values 0..16) divided by
    16 and upsampled bilinearly (``align_corners=False``, which keeps values in [0, 1]). Labels are
    int64 in 0..9. The split is fixed: a permutation of the 1797 samples drawn from
    ``torch.Generator().manual_seed(0)``; the first 20% (359 samples) are "test", the other 1438
    "train". ``split="all"`` returns every sample in the original order.

    Raises:
        ValueError: ``split`` is not "train", "test" or "all".
        ImportError: scikit-learn is not installed.
    """
    check.choice("split", split, ("train", "test", "all"))
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("fastadv.data.digits needs scikit-learn (pip install scikit-learn)") from error
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0).contiguous()  # exact [0, 1] despite rounding in the filter
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if split == "all":
        return images, labels
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(len(labels) * DIGITS_TEST_FRACTION)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return images[chosen], labels[chosen]


def open_data(spec: str, split: str = "test", *, input_size=None, crop_size: int | None = None,
              skip_bad: bool = False) -> Source:  # fmt: skip
    """The data set `spec` names, streamed: 'digits' (its `split`, in memory), a CIFAR-10/100
    folder (its `split`: "train" or "test"), an image folder (one sub-folder per class; resized
    on load to `input_size` (H, W) or, with `crop_size`, shorter side then centre crop; bad
    images left out and listed with `skip_bad`), or an .npz file with arrays x and y
    (memory-mapped). Raises DataError naming the file and the problem."""
    import os

    if spec == "digits":
        if input_size is not None or crop_size is not None:
            raise DataError("digits: its images are 16x16 and are not resized (resizing is for image folders)")
        source = TensorSource(*digits(split), name="digits")
        source.classes = [str(digit) for digit in range(10)]  # label d is the digit d (for the report's class map)
        return source
    if os.path.isdir(spec) and cifar_layout(spec) is not None:
        if input_size is not None or crop_size is not None:
            raise DataError(f"{spec}: CIFAR images are 32x32 and are not resized (no input size for them)")
        return CifarSource(spec, "train" if split == "train" else "test")
    if os.path.isdir(spec):
        return ImageFolderSource(spec, input_size, crop_size, skip_bad=skip_bad)
    if input_size is not None or crop_size is not None:
        raise DataError(f"{spec}: only image folders are resized on load (an .npz file's images are used as saved)")
    return NpzSource(spec)


def open_selection(spec: str, split: str = "test", *, input_size=None, crop_size: int | None = None,
                   skip_bad: bool = False, limit: int | None = None, subset: int | None = None,
                   shuffle_seed: int | None = None) -> Selection:  # fmt: skip
    """The samples of `spec` (see open_data) that `limit`, `subset` and `shuffle_seed` select
    (see select). Raises DataError when the data cannot be read, ValueError naming the
    selection's argument when it does not fit the data (a subset larger than the data)."""
    source = open_data(spec, split, input_size=input_size, crop_size=crop_size, skip_bad=skip_bad)
    return select(source, limit=limit, subset=subset, shuffle_seed=shuffle_seed)


def materialize(source: Source) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole data set as (float32 images [N, C, H, W] in [0, 1], int64 labels): for small sets
    only (it is N x C x H x W x 4 bytes). Read in this process; DataError at the first bad image."""
    stream = BatchStream(Selection(source), [(0, range(len(source)))], torch.device("cpu"), workers=0)
    batch = next(iter(stream))
    return batch.x.contiguous(), batch.y


def load_npz(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a NumPy ``.npz`` file with arrays ``x`` and ``y``, read whole
    (`open_data` maps it instead).

    x: [N, H, W] (one channel), [N, C, H, W] or [N, H, W, C] (C of 1, 3 or 4 last, where dim 1 is
    not such a count), N >= 1; uint8 (divided by 255) or floating values in [0, 1]. y: [N]
    non-negative integers that fit int64. Returns float32 images [N, C, H, W] and int64 labels.
    Raises DataError (a ValueError) naming the file and the problem.
    """
    return materialize(NpzSource(path))


def image_folder(path: str, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images, labels, class_names)`` from a folder with one sub-folder of images per class
    (torchvision's ImageFolder layout: class names sorted, label i = the i-th name), read whole
    (`open_data` streams it instead).

    Images are RGB, float32 [N, 3, H, W] in [0, 1]. With `size`, each is resized so that its
    shorter side is `size` and center-cropped to size x size; without it, all must already share
    one size. Raises DataError naming the folder or file.
    """
    source = ImageFolderSource(path, crop_size=size)
    images, labels = materialize(source)
    return images, labels, list(source.classes)
