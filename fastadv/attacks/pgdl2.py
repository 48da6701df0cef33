"""PGD with the L2 norm (Madry et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch

from .gradient import GradientAttack


class PGDL2(GradientAttack):
    r"""Projected gradient descent in the L2 ball: "Towards Deep Learning Models Resistant to
    Adversarial Attacks", Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083.

    Distance: L2 (per sample, over all non-batch dims). Each step moves a sample by ``alpha``
    along its normalised loss gradient, rescales the perturbation into the ``eps`` ball and
    clamps to ``[lower, upper]``, in one fused op.

    Arguments (defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        eps (float or tensor [B]): radius of the ball, in pixel units. Default: 1.0.
        alpha (float or tensor [B]): step length. Default: 0.2.
        steps (int): number of steps. Default: 10.
        random_start (bool): start at a random direction and a uniform radius in the ball, as
            torchattacks does. Default: True.
        **options: the options of :class:`fastadv.PGD` (targeted, restarts, early_stop, ...).

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64 (the
    targets when targeted). Returns images of the same shape and dtype. Errors and model
    safety: as for :class:`fastadv.PGD`.

    Example:
        >>> attack = fastadv.PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=True)
        >>> adv_images = attack(images, labels)
    """

    norm = "l2"

    def __init__(
        self,
        model: Any,
        eps: float | torch.Tensor = 1.0,
        alpha: float | torch.Tensor = 0.2,
        steps: int = 10,
        random_start: bool = True,
        **options: Any,
    ):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, **options)
