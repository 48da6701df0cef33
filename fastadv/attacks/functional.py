"""Functional forms of the attacks: one call, adversarial images back."""

from __future__ import annotations

from typing import Any

import torch

from .. import checks as check
from .fgsm import FGSM
from .pgd import PGD
from .pgdl2 import PGDL2


def fgsm(
    model: Any, images: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor = 8 / 255, **options: Any
) -> torch.Tensor:
    """``FGSM(model, eps, **options)(images, labels)``: see :class:`fastadv.FGSM`."""
    return FGSM(model, eps=eps, **options)(images, labels)


def pgd(
    model: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor | None = None,
    steps: int = 10,
    norm: str = "linf",
    **options: Any,
) -> torch.Tensor:
    """PGD in the L-inf (:class:`fastadv.PGD`) or L2 (:class:`fastadv.PGDL2`) ball.

    alpha defaults to eps / 4 (2.5 * eps / steps for the default 10 steps, Madry et al.'s rule);
    random_start defaults to True. Other options as for :class:`fastadv.PGD`.

    Example:
        >>> adv = fastadv.pgd(model, images, labels, eps=8/255)               # L-inf, alpha = 2/255
        >>> adv = fastadv.pgd(model, images, labels, eps=0.5, norm="l2", steps=20, alpha=0.1)
    """
    norm = check.norm(norm)
    eps = check.parameter("eps", eps, nonnegative=True)
    if alpha is None:
        alpha = eps / 4
    attack = PGD if norm == "linf" else PGDL2
    return attack(model, eps=eps, alpha=alpha, steps=steps, **options)(images, labels)
