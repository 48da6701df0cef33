"""Datasets that need no download.

`digits` is scikit-learn's copy of the UCI handwritten digits (1797 grey 8x8 images, ten
classes), which ships inside the scikit-learn package, so it loads offline in milliseconds.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from . import _validate as check

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
        raise ImportError("fastadv.datasets.digits needs scikit-learn (pip install scikit-learn)") from error
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


class DataError(ValueError):
    """A data file is missing, unreadable or holds arrays of the wrong shape, type or range."""


def load_npz(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a NumPy ``.npz`` file with arrays ``x`` and ``y``.

    x: [N, H, W] (one channel), [N, C, H, W] or [N, H, W, C] (C of 1, 3 or 4 last, where dim 1 is
    not such a count), N >= 1; uint8 (divided by 255) or floating values in [0, 1]. y: [N]
    non-negative integers that fit int64. Returns float32 images [N, C, H, W] and int64 labels. Raises DataError (a
    ValueError) naming the file and the problem.
    """
    import zipfile

    import numpy as np

    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy file: one array
            raise DataError(f"{path}: expected an .npz file with arrays 'x' and 'y', found one array (.npy)")
        with archive:
            if "x" not in archive or "y" not in archive:
                raise DataError(f"{path}: expected arrays 'x' and 'y', found {', '.join(archive.files) or 'none'}")
            x, y = archive["x"], archive["y"]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # a damaged or truncated file
        raise DataError(f"{path}: not a readable .npz file ({type(error).__name__})") from None
    if x.shape[:1] == (0,):
        raise DataError(f"{path}: holds no samples (x has shape {x.shape})")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataError(f"{path}: x must be [N, H, W], [N, C, H, W] or [N, H, W, C], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: y must have shape [N] = [{x.shape[0]}], got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DataError(f"{path}: y must hold non-negative integer class indices")
    if y.size and int(y.max()) > np.iinfo(np.int64).max:  # uint64 would wrap to negative labels
        raise DataError(f"{path}: y must fit in int64, got a label of {int(y.max())}")
    if x.dtype == np.uint8:
        images = torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if images.numel() and not (float(images.min()) >= 0.0 and float(images.max()) <= 1.0):
            raise DataError(f"{path}: floating x must lie in [0, 1] (no NaN); scale it or save uint8")
    else:
        raise DataError(f"{path}: x must be uint8 or floating, got {x.dtype}")
    return images.contiguous(), torch.from_numpy(y.astype(np.int64))


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _read_image(Image, file_path: str, size: int | None):  # noqa: N803 (PIL.Image, imported lazily)
    """The image as a uint8 array [H, W, 3], resized and centre-cropped to size x size if given."""
    import numpy as np

    with Image.open(file_path) as image:
        image = image.convert("RGB")
        if size is not None:
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), Image.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


def image_folder(path: str, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images, labels, class_names)`` from a folder with one sub-folder of images per class
    (torchvision's ImageFolder layout: class names sorted, label i = the i-th name).

    Images are read with Pillow as RGB, float32 [N, 3, H, W] in [0, 1]. With `size`, each is
    resized so that its shorter side is `size` (bilinear) and center-cropped to size x size;
    without it, all must already share one size. Raises DataError naming the folder or file.
    """
    import os

    import numpy as np

    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("image folders need Pillow (pip install pillow)") from error
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such folder")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    if not classes:
        raise DataError(f"{path}: expected one sub-folder of images per class, found none")
    if size is not None:
        check.positive_int("size", size)
    arrays, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        for file in sorted(os.listdir(folder)):
            if not file.lower().endswith(IMAGE_EXTENSIONS):
                continue
            file_path = os.path.join(folder, file)
            try:
                with warnings.catch_warnings():  # a decompression bomb's warning is an error too
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    arrays.append(_read_image(Image, file_path, size))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise DataError(f"{file_path}: too many pixels to read safely (a decompression bomb?); "
                                f"Pillow's limit is {Image.MAX_IMAGE_PIXELS} pixels") from None  # fmt: skip
            except OSError as error:
                raise DataError(f"{file_path}: not a readable image ({error})") from None
            labels.append(label)
    if not arrays:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{path}: images have different sizes {sorted(shapes)[:3]}...; pass a size to resize them")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64), classes
