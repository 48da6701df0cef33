"""Factories the tests name as `--model support.model_factories:<name>` (tests/ is on sys.path): models
that return something other than logits, factories that record their arguments, try to
download, fail, or build no module."""

from __future__ import annotations

import torch
from torch import nn


class _Head(nn.Module):
    """Logits of [B, C, H, W] images (any C, H, W), passed to `shape` for what the model returns."""

    def __init__(self, num_classes: int = 10, shape=lambda logits: logits):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.linear = nn.Linear(4, num_classes)
        self.shape = shape

    def forward(self, x: torch.Tensor):
        return self.shape(self.linear(self.pool(x).mean(1).flatten(1)))


def tuple_output() -> nn.Module:
    return _Head(shape=lambda logits: (logits, logits.detach()))


def dict_output() -> nn.Module:
    return _Head(shape=lambda logits: {"logits": logits, "aux": logits})


def wrong_shape() -> nn.Module:
    return _Head(shape=lambda logits: logits.unsqueeze(1))


def integer_output() -> nn.Module:
    return _Head(shape=lambda logits: logits.argsort(1))


def records(pretrained: bool = True, weights: str | None = "DEFAULT", num_classes: int = 1000) -> nn.Module:
    """Keeps the arguments it was called with: a factory must get weights=None, pretrained=False."""
    model = _Head(num_classes)
    model.called_with = {"pretrained": pretrained, "weights": weights, "num_classes": num_classes}
    return model


def records_kwargs(**kwargs) -> nn.Module:
    model = _Head(kwargs.get("num_classes", 10))
    model.called_with = kwargs
    return model


def no_classes() -> nn.Module:
    """Takes no num_classes: --num-classes is only checked against its output (10 classes)."""
    return _Head()


def downloads(weights=None) -> nn.Module:
    torch.hub.download_url_to_file("https://download.example/weights.pth", "/tmp/never-written.pth")
    return _Head()


def fails() -> nn.Module:
    raise RuntimeError("no weights for\nthis model")


def not_a_module():
    return lambda x: x


NOT_CALLABLE = 3
