"""An image folder: one sub-folder of images per class (torchvision's ImageFolder layout, which
ImageNet's validation set, ImageNet-A and ImageNet-O use). Class names are the sorted sub-folder
names, label i the i-th. Indexing reads each file's header only (Pillow, lazily: its size, and
Pillow's decompression-bomb limit); images are decoded when a batch is read, by
torchvision.io.decode_image, as RGB uint8. 16-bit images (PNG, TIFF) are scaled to 8 bits with
rounding (v16 / 257, 0..65535 -> 0..255): batches stay uint8 until the device, so a 16-bit
image reaches the model at the 8-bit precision of every other image."""

from __future__ import annotations

import hashlib
import os
import warnings
from array import array

import numpy as np
import torch

from . import resize as resizing
from .paths import Paths
from .source import BadSample, DataError, Source

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PILLOW_ONLY = (".bmp", ".tif", ".tiff")  # formats torchvision.io does not decode


class ImageFolderSource(Source):
    """The images of the folder `path`, resized on load to `input_size` (H, W) or, with
    `crop_size`, shorter side then a centred square crop; without either all images must share
    one size. `skip_bad`: files that cannot be read are left out and listed (`skipped`, and the
    evaluation report's `skipped_images`) instead of being an error.

    Raises DataError: no such folder, no class folder, a class folder without images, mixed
    sizes without a resize (naming two files and their sizes), a file that is no image (or too
    large to decode safely) unless `skip_bad`."""

    def __init__(self, path: str, input_size=None, crop_size: int | None = None, *, skip_bad: bool = False):
        from .. import checks as check

        self.name, self.skip_bad = path, check.flag("skip_bad", skip_bad)
        self.size = resizing.input_size("input_size", input_size)
        if crop_size is not None:
            check.positive_int("crop_size", crop_size)
        self.crop_size = crop_size
        self.resize = resizing.make_resize(self.size, crop_size)
        resizing.torchvision()  # the clear ImportError now, not in a worker
        if not os.path.isdir(path):
            raise DataError(f"{path}: no such folder")
        self.classes = sorted(
            d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")
        )
        if not self.classes:
            raise DataError(f"{path}: expected one sub-folder of images per class, found none")
        # per file only its path and label are kept, compactly (memory flat in the number of
        # files); the names, sizes and times of the identity go straight into a digest
        files, labels, skipped, sizes = Paths(), array("q"), [], {}
        digest = hashlib.sha256()
        for label, name in enumerate(self.classes):
            folder = os.path.join(path, name)
            names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not names:
                raise DataError(f"{folder}: class folder '{name}' holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                "remove it or add its images (labels are the sorted class folders)")  # fmt: skip
            for file in names:
                file_path = os.path.join(folder, file)
                try:
                    size = _header_size(file_path)
                except BadSample as error:
                    if not self.skip_bad:
                        raise DataError(f"{file_path}: {error}") from None
                    skipped.append(f"{file_path}: {error}")
                    continue
                sizes.setdefault(size, file_path)
                stat = os.stat(file_path)
                digest.update(f"{chr(10) if files else ''}{name}/{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
                files.append(file_path)
                labels.append(label)
        if not files:
            raise DataError(f"{path}: no readable images in the class folders")
        if self.resize is None and len(sizes) > 1:
            (size_a, file_a), (size_b, file_b) = list(sizes.items())[:2]
            raise DataError(f"images of different sizes: {file_a} is {size_a[0]}x{size_a[1]}, {file_b} is "
                            f"{size_b[0]}x{size_b[1]} (width x height); resize on load (--input-size H,W)")  # fmt: skip
        self.files, self.skipped = files, tuple(skipped)
        self.labels = np.frombuffer(labels, dtype=np.int64).copy()
        self._stats = digest.digest()

    def describe(self, index: int) -> str:
        return self.files[index]

    def read(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            if path.lower().endswith(PILLOW_ONLY):
                image = _pillow_decode(path)
            else:
                tv = resizing.torchvision()
                with warnings.catch_warnings():  # 0.29 deprecates its decoders in favour of TorchCodec, on every call
                    warnings.simplefilter("ignore", DeprecationWarning)
                    image = tv.io.decode_image(path, mode=tv.io.ImageReadMode.RGB)
        except (RuntimeError, OSError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            reason = reason.rsplit(".cpp:", 1)[-1].lstrip("0123456789, ")  # less torchvision's source location
            raise BadSample(f"not a readable image ({reason})") from None
        if image.dim() == 4:  # an animated GIF: its first frame
            image = image[0]
        if image.dtype == torch.uint16:  # a 16-bit PNG
            image = to_8_bit(image.to(torch.int32))
        return image if self.resize is None else self.resize(image)

    def _identity(self) -> bytes:
        return self._stats + resizing.describe(self.size, self.crop_size).encode()


def _header_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header; BadSample when it is no image Pillow knows or
    has more pixels than Pillow's decompression-bomb limit."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # a decompression bomb's warning is an error too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadSample(f"too many pixels to read safely (a decompression bomb?); Pillow's limit is "
                        f"{Image.MAX_IMAGE_PIXELS} pixels") from None  # fmt: skip
    except OSError as error:
        raise BadSample(f"not a readable image ({error})") from None


def to_8_bit(values: torch.Tensor) -> torch.Tensor:
    """16-bit samples (integers in [0, 65535]) as uint8, rounded to the nearest of 0..255
    (65535 / 255 = 257 exactly, so v16 = 257 * v8 maps back to v8)."""
    return ((values + 128) // 257).to(torch.uint8)


def _pillow_decode(path: str) -> torch.Tensor:
    """BMP and TIFF, which torchvision.io does not decode: RGB uint8 [3, H, W] through Pillow
    (16-bit grayscale scaled by to_8_bit: Pillow's RGB conversion would clip it to 255)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode.startswith("I;16"):
            gray = to_8_bit(torch.from_numpy(np.asarray(image).astype(np.int32)))
            return gray.expand(3, *gray.shape).contiguous()
        if image.mode in ("I", "F"):  # 32-bit integers or floats: no one range to scale from
            raise BadSample(f"32-bit {'integer' if image.mode == 'I' else 'float'} images are not supported "
                            "(save them with 8 or 16 bits per channel)")  # fmt: skip
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
