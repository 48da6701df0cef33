"""Training. `train_standard` fits a classifier without attacks (the undefended baseline that
tests and benchmarks attack)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def train_standard(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> nn.Module:
    """Trains `model` in place with Adam on cross-entropy, shuffling with a generator seeded by
    `seed`; leaves it in eval mode and returns it. images [N, ...], labels [N] int64."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels must have as many samples, got {images.shape[0]} and {labels.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        for start in range(0, images.shape[0], batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()
