"""What fastadv expects of a model in any format: it takes images in [0, 1] (`Normalized` wraps a
trained on normalized images) and logits out (`check_logits` says what a model returned
instead)."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks as check
from .formats import ModelError, _few


class Normalized(nn.Module):
    """``model((x - mean) / std)``: images in [0, 1] normalized as the model was trained, inside
    the function the attacks differentiate (the attacks' own mean/std options compute the
    same). mean and std: one value or one per channel (buffers, so they are part of the
    model's fingerprint)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        mean, std = check.normalization(mean, std)
        if mean is None:
            raise ValueError("mean and std must be given")
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = max(self.mean.numel(), self.std.numel())
        if x.dim() < 2 or values not in (1, x.shape[1]):
            raise ValueError(f"mean and std have {values} values but the images have shape {tuple(x.shape[1:])} "
                             f"(expected {values} channels)")  # fmt: skip
        view = (1, -1) + (1,) * (x.dim() - 2)
        return self.model((x - self.mean.to(x.dtype).view(view)) / self.std.to(x.dtype).view(view))


def check_logits(model, images: torch.Tensor, num_classes: int | None = None, *, name: str = "model") -> int:
    """Runs `model` on `images` (a first batch, B >= 1) and returns its number of classes;
    ModelError (naming `name`) when it returns anything but floating logits [B, classes >= 2],
    saying what it returned (a tuple, a dict, a tensor of another shape), or when `num_classes`
    is given and differs."""
    with torch.no_grad():
        output = model(images)
    batch = images.shape[0]
    if not (isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == batch
            and output.shape[1] >= 2):  # fmt: skip
        raise ModelError(f"{name}: returned {_describe(output)}; expected logits, a tensor [B, classes] "
                         f"(here B = {batch})")  # fmt: skip
    if not output.is_floating_point():
        raise ModelError(f"{name}: returned {output.dtype} values; expected floating-point logits")
    classes = int(output.shape[1])
    if num_classes is not None and classes != num_classes:
        raise ModelError(f"{name}: returns {classes} classes, expected num_classes = {num_classes}")
    return classes


def _describe(output, depth: int = 0) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}" if depth == 0 else f"tensor {tuple(output.shape)}"
    if isinstance(output, (tuple, list)):
        if depth:
            return f"{type(output).__name__} of {len(output)}"
        parts = ", ".join(_describe(o, depth + 1) for o in output[:4]) + (", ..." if len(output) > 4 else "")
        return f"a {type(output).__name__} of {len(output)} ({parts})"
    if isinstance(output, dict):
        return f"a dict with keys {_few([str(k) for k in output])}" if depth == 0 else "dict"
    return f"a {type(output).__name__}" if depth == 0 else type(output).__name__
