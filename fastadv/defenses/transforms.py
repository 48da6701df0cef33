"""Input transformations put in front of a classifier as defences, each an `nn.Module` on images
[B, C, H, W] in [0, 1] that returns images of the same shape and dtype.

- :class:`BitDepth` (Xu, Evans and Qi 2018, "Feature Squeezing"): each value rounded to one of
  2**bits levels.
- :class:`JPEG` (Guo et al. 2018; Dziugaite et al. 2016): real JPEG compression and decompression
  at a quality, through torchvision.io (uint8 round trip, the whole batch in one call).
- :class:`MedianFilter` (Xu, Evans and Qi 2018): the median of each size x size window, per
  channel, with reflect padding.
- :class:`RandomResizePad` (Xie et al. 2018, "Mitigating Adversarial Effects Through
  Randomization"): each image shrunk to a random size and put at a random place on a zero canvas
  of the input's size; new draws at every call, from the transform's generator.

Gradients. Each transform declares the backward pass an adaptive attack uses
(`adaptive_backward`): "identity" is BPDA's straight-through gradient (Athalye, Carlini and Wagner
2018, "Obfuscated Gradients"): the forward pass is the transform, the backward pass that of the
identity, which is what an attacker uses for a transform that is about the identity but has no
useful gradient. "exact" keeps the transform's own gradient (RandomResizePad is differentiable;
its randomness is what an adaptive attack averages over, with EOT: ``eot_samples``). Outside an
adaptive attack (see :mod:`fastadv.defenses.context`) every transform's gradient is its own:
BitDepth's and JPEG's are zero (they are piecewise constant: small changes of the input do not
change the rounded values), which is why plain PGD reports them robust.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks as check
from .context import adaptive_active


class _StraightThrough(torch.autograd.Function):
    """Forward: `fn(x)`; backward: the incoming gradient unchanged (BPDA with the identity)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _PiecewiseConstant(torch.autograd.Function):
    """Forward: `fn(x)`; backward: zero, the gradient of a function that is constant almost
    everywhere (a quantizer). The output still depends on x through autograd, so an attack that
    is not adaptive sees a zero gradient (and is masked) rather than no graph at all."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.zeros_like(grad), None


class Transform(nn.Module):
    """The root of the input transformations. A subclass implements `transform` (the forward
    computation, images [B, C, H, W] -> the same shape and dtype) and sets:

    - `adaptive_backward`: "identity" (BPDA straight-through) or "exact" (its own gradient) when
      an adaptive attack runs it;
    - `differentiable`: False when `transform` leaves autograd (JPEG's uint8 round trip): its own
      gradient is then zero (:class:`_PiecewiseConstant`);
    - `randomized`: True when each call draws anew (EOT applies).
    """

    adaptive_backward = "identity"
    differentiable = True
    randomized = False

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images: {type(self).__name__} takes floating images [B, C, H, W], got {shape}")
        if self.adaptive_backward == "identity" and adaptive_active():
            return _StraightThrough.apply(x, self._no_grad_transform)
        if not self.differentiable:
            return _PiecewiseConstant.apply(x, self._no_grad_transform)
        return self.transform(x)

    def _no_grad_transform(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.transform(x.detach())


def _int_in(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int in {low}..{high}, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


class BitDepth(Transform):
    """Reduces each value to `bits` bits: round(x * (2**bits - 1)) / (2**bits - 1), for images
    in [0, 1]. bits: an int in 1..8. Its own gradient is zero; adaptive: straight-through."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = _int_in("bits", bits, 1, 8)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        # torch.round's gradient is zero: the exact gradient of the quantizer
        return torch.round(x * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class JPEG(Transform):
    """JPEG compression and decompression at `quality` (an int in 1..100), through
    torchvision.io.encode_jpeg / decode_jpeg on the whole batch: images in [0, 1] are rounded to
    uint8, encoded, decoded and divided by 255. Images with 1 or 3 channels are encoded as
    greyscale or RGB; any other channel count is encoded one channel at a time as greyscale.
    Runs on the CPU (the images are copied there and back). Its own gradient is zero (the uint8
    rounding makes it piecewise constant); adaptive: straight-through."""

    differentiable = False

    def __init__(self, quality: int):
        super().__init__()
        self.quality = _int_in("quality", quality, 1, 100)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if x.numel() == 0:
            return x.clone()
        pixels = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        planes = pixels if c in (1, 3) else pixels.reshape(b * c, 1, h, w)
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its codecs in favour of torchcodec, which is not a
            # dependency; they are still the real libjpeg codec, batched
            warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

            decoded = decode_jpeg(encode_jpeg(list(planes), quality=self.quality), mode=ImageReadMode.UNCHANGED)
        out = torch.stack(decoded).reshape(b, c, h, w)
        return (out.to(x.device, torch.float32) / 255).to(x.dtype)

    def extra_repr(self) -> str:
        return f"quality={self.quality}"


class MedianFilter(Transform):
    """The median of each `size` x `size` window (an odd int >= 1), per channel, with reflect
    padding (so each side of the image must be larger than size // 2). Its own gradient flows to
    each window's median pixel only; adaptive: straight-through."""

    def __init__(self, size: int):
        super().__init__()
        size = check.positive_int("size", size)
        if size % 2 == 0:
            raise ValueError(f"size must be odd (the window is centred on its pixel), got {size}")
        self.size = size

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        k, r = self.size, self.size // 2
        if r and min(x.shape[2], x.shape[3]) <= r:
            raise ValueError(f"images of {x.shape[2]}x{x.shape[3]} are too small for reflect padding by {r} "
                             f"(MedianFilter size {k})")  # fmt: skip
        padded = F.pad(x, (r, r, r, r), mode="reflect") if r else x
        windows = padded.unfold(2, k, 1).unfold(3, k, 1)  # [B, C, H, W, k, k]
        return windows.flatten(4).median(dim=4).values

    def extra_repr(self) -> str:
        return f"size={self.size}"


class RandomResizePad(Transform):
    """Xie et al. 2018's randomization, at the input's size: each image is resized (bilinear) to a
    random side in [ceil(min_scale * side), side] (height and width scaled alike) and placed at a
    random offset on a zero canvas of the original size. Each image of the batch, and each call,
    draws anew from `generator` (a torch.Generator; None: torch's global one), so a seeded
    generator reproduces the draws. min_scale: a number in (0, 1]. Its gradient is its own
    (bilinear resampling is differentiable); an adaptive attack averages it over draws (EOT)."""

    adaptive_backward = "exact"
    randomized = True

    def __init__(self, min_scale: float = 0.8, generator: torch.Generator | None = None):
        super().__init__()
        min_scale = check.number("min_scale", min_scale, above=0, at_most=1)
        self.min_scale = min_scale
        self.generator = check.generator(generator)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        gen = self.generator
        device = gen.device if gen is not None else torch.device("cpu")
        draws = torch.rand(b, 3, generator=gen, device=device).to("cpu", torch.float64)
        scale = self.min_scale + (1 - self.min_scale) * draws[:, 0]
        size_h = torch.clamp(torch.ceil(scale * h), 1, h)
        size_w = torch.clamp(torch.round(size_h * w / h), 1, w)
        top = torch.floor(draws[:, 1] * (h - size_h + 1)).clamp(max=h - size_h)
        left = torch.floor(draws[:, 2] * (w - size_w + 1)).clamp(max=w - size_w)
        # output pixel centre u (normalized, align_corners=False) reads input coordinate
        # (side / size) * u + (side - 2 * offset) / size - 1: the image resized to `size` at `offset`
        theta = torch.zeros(b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = w / size_w
        theta[:, 0, 2] = (w - 2 * left) / size_w - 1
        theta[:, 1, 1] = h / size_h
        theta[:, 1, 2] = (h - 2 * top) / size_h - 1
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        grid = F.affine_grid(theta.to(x.device, dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale:g}"
