"""Defences written as text, as `fastadv eval --defense` takes them: "jpeg:75,bits:5" is JPEG at
quality 75 followed by 5-bit depth reduction. Names: bits:BITS, jpeg:QUALITY, median:SIZE,
resize:MIN_SCALE (RandomResizePad; the scale may be left out: resize = resize:0.8)."""

from __future__ import annotations

import torch
from torch import nn

from .transforms import JPEG, BitDepth, MedianFilter, RandomResizePad

TRANSFORMS = {"bits": "BITS (1..8)", "jpeg": "QUALITY (1..100)", "median": "SIZE (odd)", "resize": "MIN_SCALE"}


def parse_defense(text: str, generator: torch.Generator | None = None) -> list[nn.Module]:
    """The transforms `text` names, in order (`generator` seeds the random ones). Raises
    ValueError naming the part of `text` that is wrong and what was expected."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"defense: expected NAME:VALUE[,NAME:VALUE...] with names {', '.join(TRANSFORMS)}")
    transforms = []
    for part in (p.strip() for p in text.split(",")):
        name, _, value = part.partition(":")
        name = name.strip().lower()
        if name not in TRANSFORMS:
            raise ValueError(f"defense: unknown transform {name!r} in {text!r}; expected one of "
                             + ", ".join(f"{n}:{v}" for n, v in TRANSFORMS.items()))  # fmt: skip
        if name == "resize" and not value:
            value = "0.8"
        try:
            number = float(value) if name == "resize" else int(value)
        except ValueError:
            raise ValueError(f"defense: {name} takes {TRANSFORMS[name]}, got {value!r}") from None
        try:
            if name == "bits":
                transforms.append(BitDepth(number))
            elif name == "jpeg":
                transforms.append(JPEG(number))
            elif name == "median":
                transforms.append(MedianFilter(number))
            else:
                transforms.append(RandomResizePad(number, generator=generator))
        except (TypeError, ValueError) as error:
            raise ValueError(f"defense: {part}: {error}") from None
    return transforms
