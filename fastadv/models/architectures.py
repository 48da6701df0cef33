"""The architectures fastadv builds: `small_cnn`, the digits classifier (trains to ~98% in seconds
on a CPU), and `resnet18`, the CIFAR-style ResNet-18 (3x3 stem, no max-pool; He et al. 2016, as
used in adversarial-training papers) that benchmarks time with random weights; it needs no
torchvision. Each model remembers how it was built (`fastadv_spec`), so that fastadv's model
files (files.py) hold no code: ARCHITECTURES rebuilds it by name."""

from __future__ import annotations

import torch
from torch import nn

from .. import checks as check

ARCHITECTURES = {}  # name -> factory; filled below


def _remember_spec(model: nn.Module, arch: str, **kwargs) -> nn.Module:
    """Records how to rebuild the model, so that `save` / `load` need no code from the user."""
    model.fastadv_spec = {"arch": arch, "kwargs": kwargs}
    return model


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """Two 3x3 conv blocks (width, 2*width channels, ReLU, 2x2 max-pool) and two linear layers.
    Accepts ``[B, in_channels, H, W]`` with H and W divisible by 4; the head adapts to any such
    size through adaptive average pooling to 4x4."""
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
        check.positive_int(name, value)
    model = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )
    return _remember_spec(model, "small_cnn", in_channels=in_channels, num_classes=num_classes, width=width)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: [B, 3, H, W] -> [B, num_classes] logits (any H, W >= 8)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet18:
    """A CIFAR-style ResNet-18 with PyTorch's default random initialisation."""
    return _remember_spec(
        ResNet18(num_classes, in_channels), "resnet18", num_classes=num_classes, in_channels=in_channels
    )


ARCHITECTURES.update(small_cnn=small_cnn, resnet18=resnet18)
