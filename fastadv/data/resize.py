"""The resize a data set applies to every image as it is decoded (torchvision transforms v2, on
uint8 tensors): `input_size` (H, W) resizes to exactly that; `crop_size` S resizes the shorter
side to S and takes the centred S x S crop (ImageNet's evaluation habit)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import checks as check


def torchvision():
    """The torchvision module, or ImportError saying how to get it."""
    import warnings

    try:
        with warnings.catch_warnings():  # 0.29 deprecates torchvision.io's decoders in favour of TorchCodec
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            import torchvision as tv
            import torchvision.io
            import torchvision.transforms.v2  # noqa: F401
    except ImportError as error:  # pragma: no cover - torchvision is a dependency of the vision extra
        raise ImportError(
            "image folders need torchvision (the release matching your torch: pip install torchvision, "
            "or pip install 'fastadv[vision]')"
        ) from error
    return tv


def input_size(name: str, value: object) -> tuple[int, int] | None:
    """None, N (N x N) or (H, W): positive integers."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return check.positive_int(name, value[0]), check.positive_int(name, value[1])
    if isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be N or (H, W), got {len(value)} numbers")
    side = check.positive_int(name, value)
    return side, side


def make_resize(size: tuple[int, int] | None, crop_size: int | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The transform for uint8 [C, H, W] images (None: images are kept as they are)."""
    if size is not None and crop_size is not None:
        raise ValueError("input_size and crop_size: give one of them (resize to H x W, or shorter side and crop)")
    if size is None and crop_size is None:
        return None
    v2 = torchvision().transforms.v2
    if size is not None:
        return v2.Resize(size, antialias=True)
    return v2.Compose([v2.Resize(crop_size, antialias=True), v2.CenterCrop(crop_size)])


def describe(size: tuple[int, int] | None, crop_size: int | None) -> str:
    """The resize in words (it is part of a data set's identity)."""
    if size is not None:
        return f"resize {size[0]}x{size[1]}"
    return f"shorter side {crop_size}, centre crop" if crop_size is not None else "as stored"
