"""`.npz` files with arrays x (images) and y (labels), memory-mapped: x is never read whole.

An uncompressed .npz (np.savez) is a zip whose members are stored as they are, so x's bytes lie
at a fixed offset of the file and are mapped there (np.memmap). A compressed one (np.savez_compressed)
cannot be mapped: its x is decompressed once, in chunks, into a temporary .npy file that is
mapped instead (deleted with the data set), so memory stays bounded either way."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zipfile

import numpy as np
import torch

from .. import checks as check
from .source import DataError, Source, file_digest

_CHANNEL_COUNTS = (1, 3, 4)


def _member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    return archive.getinfo(f"{name}.npy")


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read:
        raise ValueError(f"unsupported .npy version {version}")
    return read[version](f)  # shape, fortran_order, dtype


def _stored_offset(path: str, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) member's bytes start in the zip file."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local file header")
        name_length = int.from_bytes(local[26:28], "little")
        extra_length = int.from_bytes(local[28:30], "little")
        return info.header_offset + 30 + name_length + extra_length


def map_member(path: str, name: str, scratch: list[str]) -> np.ndarray:
    """The .npz member `name` as a read-only np.memmap (a temporary .npy for a compressed one,
    its folder appended to `scratch`)."""
    with zipfile.ZipFile(path) as archive:
        info = _member(archive, name)
        if info.compress_type == zipfile.ZIP_STORED:
            start = _stored_offset(path, info)
            with open(path, "rb") as f:
                f.seek(start)
                shape, fortran, dtype = _npy_header(f)
                data_offset = f.tell()
        else:
            folder = tempfile.mkdtemp(prefix="fastadv-npz-")
            scratch.append(folder)
            target = os.path.join(folder, f"{name}.npy")
            with archive.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 16 << 20)
            return np.load(target, mmap_mode="r", allow_pickle=False)
    if dtype.hasobject:
        raise ValueError("object arrays are not data")
    if not shape or int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order="F" if fortran else "C")


def _remove(folders: list[str]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


class NpzSource(Source):
    """The .npz file `path` with arrays x and y. x: [N, H, W] (one channel), [N, C, H, W] or
    [N, H, W, C] (C of 1, 3 or 4 last, where dim 1 is not such a count), N >= 1; uint8 (kept
    uint8 until the device) or floating values in [0, 1] (checked batch by batch as they are
    read). y: [N] non-negative integers that fit int64 (read whole: 8 bytes per sample).

    Raises DataError naming the file and the problem."""

    def __init__(self, path: str):
        self.name = path
        self._scratch: list[str] = []
        weakref.finalize(self, _remove, self._scratch)
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            if "x" not in names or "y" not in names:
                raise DataError(f"{path}: expected arrays 'x' and 'y', found {', '.join(names) or 'none'}")
            x = map_member(path, "x", self._scratch)
            y = np.load(path, allow_pickle=False)["y"]
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise DataError(f"{path}: a folder without class sub-folders or CIFAR files") from None
        except DataError:
            raise
        except zipfile.BadZipFile:
            if _is_npy(path):
                raise DataError(
                    f"{path}: expected an .npz file with arrays 'x' and 'y', found one array (.npy)"
                ) from None  # noqa: E501
            raise DataError(f"{path}: not a readable .npz file (BadZipFile)") from None
        except (OSError, ValueError, EOFError, KeyError) as error:  # a damaged or truncated file
            raise DataError(f"{path}: not a readable .npz file ({type(error).__name__})") from None
        self.x, self.labels = _checked(path, x, y)
        self.channels_last = x.ndim == 4 and x.shape[1] not in _CHANNEL_COUNTS and x.shape[3] in _CHANNEL_COUNTS
        self.is_float = np.issubdtype(x.dtype, np.floating)

    def read(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(np.array(self.x[index]))  # a copy of this sample only
        if image.dim() == 2:
            return image.unsqueeze(0)
        if self.channels_last:
            image = image.permute(2, 0, 1).contiguous()
        return image.float() if self.is_float else image

    def check_values(self, images: torch.Tensor, first: int) -> None:
        """Floating images must lie in [0, 1]: checked on each batch as it arrives."""
        if self.is_float and not check.in_unit_range(images):
            raise DataError(f"{self.name}: floating x must lie in [0, 1] (no NaN); scale it or save uint8 "
                            f"(found in the batch from sample {first})")  # fmt: skip

    def _identity(self) -> bytes:
        return file_digest(self.name).digest()


def _is_npy(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def _checked(path: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y checked (shapes, types, label range), y as int64; x is not read."""
    if x.shape[:1] == (0,):
        raise DataError(f"{path}: holds no samples (x has shape {x.shape})")
    if x.ndim not in (3, 4):
        raise DataError(f"{path}: x must be [N, H, W], [N, C, H, W] or [N, H, W, C], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: y must have shape [N] = [{x.shape[0]}], got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DataError(f"{path}: y must hold non-negative integer class indices")
    if y.size and int(y.max()) > np.iinfo(np.int64).max:  # uint64 would wrap to negative labels
        raise DataError(f"{path}: y must fit in int64, got a label of {int(y.max())}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: x must be uint8 or floating, got {x.dtype}")
    return x, y.astype(np.int64)
