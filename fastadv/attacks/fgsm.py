"""The fast gradient sign method (Goodfellow et al. 2015)."""

from __future__ import annotations

from typing import Any

import torch

from .gradient import GradientAttack


class FGSM(GradientAttack):
    r"""One signed-gradient step: "Explaining and Harnessing Adversarial Examples", Goodfellow et
    al., ICLR 2015, https://arxiv.org/abs/1412.6572.

    Distance: L-inf. ``clamp(x + eps * sign(grad), lower, upper)``: PGD with one step,
    ``alpha = eps`` and no random start. With ``random_start=True`` and ``alpha = 1.25 * eps`` it
    is the FGSM-RS step of Wong, Rice and Kolter ("Fast is better than free", ICLR 2020).

    Arguments (defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        eps (float or tensor [B]): radius of the L-inf ball, in pixel units. Default: 8/255.
        alpha (float or tensor [B], optional): step size. Default: eps.
        random_start (bool): start from a uniform draw in the ball. Default: False.
        **options: the options of :class:`fastadv.PGD` (targeted, restarts, early_stop, ...).

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64 (the
    targets when targeted). Returns images of the same shape and dtype. Errors and model
    safety: as for :class:`fastadv.PGD`.

    Example:
        >>> attack = fastadv.FGSM(model, eps=8/255)
        >>> adv_images = attack(images, labels)
    """

    norm = "linf"
    unsupported_because = {"steps": "FGSM takes one step; use PGD for more"}

    def __init__(
        self,
        model: Any,
        eps: float | torch.Tensor = 8 / 255,
        alpha: float | torch.Tensor | None = None,
        random_start: bool = False,
        **options: Any,
    ):
        super().__init__(
            model, eps=eps, alpha=eps if alpha is None else alpha, steps=1, random_start=random_start, **options
        )
