"""The momentum iterative fast gradient sign method (Dong et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch

from .. import checks as check
from .gradient import GradientAttack
from .params import per_sample


class MIFGSM(GradientAttack):
    r"""Signed steps along a running sum of L1-normalised gradients: "Boosting Adversarial Attacks
    with Momentum", Dong et al., CVPR 2018, https://arxiv.org/abs/1710.06081.

    Distance: L-inf. Per step ``g = grad / mean(|grad|)`` (per sample; 0 where the gradient is
    all zero), ``m = decay * m + g``, then the fused step along ``sign(m)``, projection onto the
    ``eps`` ball and clamp.

    Arguments (defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        eps (float or tensor [B]): radius of the L-inf ball, in pixel units. Default: 8/255.
        alpha (float or tensor [B]): step size. Default: 2/255.
        steps (int): number of steps. Default: 10.
        decay (float): momentum factor, >= 0. Default: 1.0.
        random_start (bool): start from a uniform draw in the ball. Default: False.
        **options: the options of :class:`fastadv.PGD` (targeted, restarts, early_stop, ...).

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64 (the
    targets when targeted). Returns images of the same shape and dtype. Errors and model
    safety: as for :class:`fastadv.PGD`.

    Example:
        >>> attack = fastadv.MIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0)
        >>> adv_images = attack(images, labels)
    """

    norm = "linf"

    def __init__(
        self,
        model: Any,
        eps: float | torch.Tensor = 8 / 255,
        alpha: float | torch.Tensor = 2 / 255,
        steps: int = 10,
        decay: float = 1.0,
        random_start: bool = False,
        **options: Any,
    ):
        self.decay = check.number("decay", decay, at_least=0)
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, **options)

    def _init_state(self, x_adv: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_adv, dtype=torch.float32)

    def _direction(self, grad: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
        grad = grad.float()
        scale = per_sample(grad.abs().flatten(1).mean(dim=1), grad)
        normalised = torch.where(scale > 0, grad / scale, torch.zeros_like(grad))
        momentum.mul_(self.decay).add_(normalised)
        return momentum
