"""An uploaded picture as the model's input: read with Pillow, converted to the model's channels
(grayscale for one-channel models such as the digits CNN) and resized to its input size.

What cannot be used becomes an `UploadError` whose message the page shows; what was changed to
fit (the size, an opaque alpha channel, colour) is said in a note beside the image."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

ACCEPTED = (".png", ".jpg", ".jpeg")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I")  # how Pillow opens a 16-bit grayscale PNG


class UploadError(ValueError):
    """The upload cannot be used: not a PNG or JPEG image, transparent pixels, too large."""


def read_upload(path: str, channels: int, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """(image float32 [channels, H, W] in [0, 1], a note on what was changed) from the file at
    `path`, resized to `size` = (H, W) (shorter side scaled, centre crop, as
    fastadv.data.image_folder does, when the aspect ratio differs)."""
    from PIL import Image

    name = os.path.basename(path)
    if channels not in (1, 3):
        raise UploadError(f"{name}: the model takes {channels} channels; uploads serve 1 (grayscale) or 3 (RGB)")
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise UploadError(f"{name}: a {image.format} image; upload a PNG or JPEG")
                image.load()
                image = image.copy()
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"{name}: too many pixels to read safely") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow's messages name the file by its path: the server's temporary folder is no
        # business of the page's visitor
        reason = " ".join(str(error).replace(repr(path), repr(name)).replace(path, name).split())
        raise UploadError(f"{name}: not a readable PNG or JPEG image ({reason})") from None
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            raise UploadError(f"{name}: has an alpha channel with transparent pixels; the model sees no "
                              "transparency: flatten it onto a background first")  # fmt: skip
        notes.append("its opaque alpha channel dropped")
    mode = "L" if channels == 1 else "RGB"
    if image.mode in SIXTEEN_BIT:
        # Pillow's convert("L") clips 16-bit values at 255 (a picture of 0s and 1s): scaled here,
        # and kept as floats ("F") through the resize
        values = np.asarray(image, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise UploadError(f"{name}: a {image.mode} image with values outside 0-65535; upload an 8- or 16-bit image")
        image = Image.fromarray((values / 65535.0).astype(np.float32), mode="F")
        notes.append("16-bit grayscale scaled to [0, 1]" + ("" if channels == 1 else ", repeated as RGB"))
        mode = "F"
    elif image.mode != mode:
        notes.append("converted to grayscale" if mode == "L" else f"converted from {image.mode} to RGB")
    image = image.convert(mode)
    height, width = size
    if (image.height, image.width) != (height, width):
        notes.append(f"resized from {image.width}x{image.height} to {width}x{height}")
        scale = max(height / image.height, width / image.width)
        h, w = max(height, round(image.height * scale)), max(width, round(image.width * scale))
        image = image.resize((w, h), Image.BILINEAR)
        top, left = (h - height) // 2, (w - width) // 2
        image = image.crop((left, top, left + width, top + height))
    if mode == "F":
        array = np.repeat(np.asarray(image, dtype=np.float32).clip(0, 1)[..., None], channels, axis=2)
    else:
        array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array.reshape(height, width, -1)).permute(2, 0, 1).contiguous()
    return tensor, f"{name}: {', '.join(notes)}" if notes else name
