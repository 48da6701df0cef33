"""Image folders with 16-bit images: PNGs (grayscale written by Pillow, RGB by a minimal PNG
writer, as Pillow cannot save 16-bit RGB) and a 16-bit grayscale TIFF are read as the 8-bit
images they round to (v16 / 257), alone and mixed with 8-bit files, in this process and in
worker processes."""

import struct
import zlib

import numpy as np
import pytest
import torch

from fastadv.data import select
from fastadv.data.folder import ImageFolderSource
from fastadv.data.loader import BatchStream


def _write_png16(path, pixels):
    """pixels: uint16 [H, W, 3] -> a 16-bit RGB PNG (colour type 2, bit depth 16, no filter)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[r].astype(">u2").tobytes() for r in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class folders a (16-bit gray PNG), b (16-bit RGB PNG), c (16-bit gray TIFF), d (8-bit RGB
    PNG), every image 12x16, and the uint8 [3, H, W] each should read as."""
    from PIL import Image

    root = tmp_path_factory.mktemp("sixteen")
    generator = np.random.default_rng(0)
    # every rounding case: multiples of 257 and the values halfway between them
    gray = generator.integers(0, 65536, (12, 16), dtype=np.uint16)
    gray[0, :4] = [0, 65535, 257 * 3 + 128, 257 * 3 + 129]
    rgb = generator.integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    eight = generator.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for name in "abcd":
        (root / name).mkdir()
    Image.fromarray(gray).save(root / "a" / "gray.png")
    assert Image.open(root / "a" / "gray.png").mode.startswith("I;16")
    _write_png16(root / "b" / "rgb.png", rgb)
    Image.fromarray(gray).save(root / "c" / "gray.tif")
    Image.fromarray(eight).save(root / "d" / "eight.png")

    def rounded(values):
        return torch.from_numpy(np.floor(values.astype(np.float64) / 257 + 0.5).astype(np.uint8))

    expected = {"a": rounded(gray).expand(3, 12, 16), "b": rounded(rgb).permute(2, 0, 1),
                "c": rounded(gray).expand(3, 12, 16), "d": torch.from_numpy(eight).permute(2, 0, 1)}  # fmt: skip
    assert expected["a"][0, 0, :4].tolist() == [0, 255, 3, 4]
    return root, expected


def test_16_bit_images_read_as_their_rounded_8_bit_values(folder):
    root, expected = folder
    source = ImageFolderSource(str(root))
    for index, name in enumerate("abcd"):
        image = source.read(index)
        assert image.dtype == torch.uint8 and torch.equal(image, expected[name]), source.describe(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_folder_mixing_16_and_8_bit_images_streams_in_batches(folder, workers):
    root, expected = folder
    stream = BatchStream(select(ImageFolderSource(str(root))), [(0, range(4))], torch.device("cpu"), workers)
    (batch,) = list(stream)
    assert batch.bad == [] and batch.y.tolist() == [0, 1, 2, 3]
    assert torch.equal(batch.x, torch.stack([expected[name] for name in "abcd"]).float() / 255)


def test_a_32_bit_image_is_refused_naming_the_file(tmp_path):
    from PIL import Image

    from fastadv.data import DataError

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.int32)).save(tmp_path / "a" / "deep.tif")
    source = ImageFolderSource(str(tmp_path))
    with pytest.raises(DataError, match=r"deep\.tif: 32-bit integer images are not supported"):
        next(iter(BatchStream(select(source), [(0, range(1))], torch.device("cpu"), 0)))
