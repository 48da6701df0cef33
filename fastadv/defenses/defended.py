"""`Defended(model, transforms)`: input transformations in front of a classifier, as one model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Defended(nn.Module):
    """``model(t_n(...t_2(t_1(images))))``: the transforms (nn.Modules, e.g. those of
    :mod:`fastadv.defenses.transforms`) in the order given, then the model. The attacks and
    `evaluate` take it like any model: the transforms and the model are submodules, so their
    modes, parameters and buffers are kept safe like any model's. Under an adaptive attack
    (``adaptive=True``) each transform uses the backward pass it declares (BPDA).

    Raises TypeError naming `model` or `transforms[i]` for something that is not an nn.Module."""

    def __init__(self, model: nn.Module, transforms: Sequence[nn.Module]):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(transforms, nn.Module) or not isinstance(transforms, Sequence):
            raise TypeError(f"transforms must be a list of nn.Modules, got {type(transforms).__name__}")
        for index, t in enumerate(transforms):
            if not isinstance(t, nn.Module):
                raise TypeError(f"transforms[{index}] must be a torch.nn.Module, got {type(t).__name__}")
        self.transforms = nn.ModuleList(transforms)
        self.model = model

    @property
    def randomized(self) -> bool:
        """Whether some transform draws anew at each call (an adaptive attack then uses EOT)."""
        return any(getattr(t, "randomized", False) for t in self.transforms)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            images = t(images)
        return self.model(images)
