"""An attack call's parameters (eps, alpha, bounds) as the user gave them, one AttackParams: how
they broadcast against the images and how they follow the batch when early stopping shrinks it.
(The ops turn each into the kernels' form, a StepParam: fastadv/backends/step_param.py.)"""

from __future__ import annotations

from typing import NamedTuple

import torch


def per_sample(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """`value` broadcastable against `like` [b, ...]: a 1-d tensor (one value or mask entry per
    sample) is viewed as [b, 1, ..., 1]; numbers and other tensors are returned as they are."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return value.view(-1, *([1] * (like.dim() - 1)))
    return value


class AttackParams(NamedTuple):
    """eps, alpha, lower and upper of one call: each a number or a tensor (per sample [B], per
    channel, or 0-d), on the images' device."""

    eps: float | torch.Tensor
    alpha: float | torch.Tensor
    lower: float | torch.Tensor
    upper: float | torch.Tensor

    def to(self, device: torch.device) -> AttackParams:
        return AttackParams(*(p.to(device) if isinstance(p, torch.Tensor) else p for p in self))

    def select(self, positions: torch.Tensor, batch: int) -> AttackParams:
        """The parameters of the samples at `positions` of a batch of `batch` samples: per-sample
        tensors are indexed, numbers and shared tensors kept."""
        return AttackParams(*(_select(p, positions, batch) for p in self))


def _select(p: float | torch.Tensor, positions: torch.Tensor, batch: int) -> float | torch.Tensor:
    # (with one sample, a [1, ...] tensor is kept: selecting from it could only give it back)
    if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] == batch and batch > 1:
        return p.index_select(0, positions)
    return p
