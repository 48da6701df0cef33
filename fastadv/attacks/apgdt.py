"""APGD-T (Croce and Hein 2020): APGD on the targeted DLR loss, towards each of the top classes."""

from __future__ import annotations

from typing import Any

import torch

from .. import _validate as check
from ._losses import targeted_dlr
from .apgd import APGD
from .base import options_without

_AUTOATTACK_TARGETS = 9


class APGDT(APGD):
    r"""APGD-T: "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", Croce and Hein, ICML 2020, https://arxiv.org/abs/2003.01690.

    Distance: L-inf or L2. APGD (see :class:`APGD`) ascending the targeted DLR loss
    ``(z_t - z_y) / (z_1 - (z_3 + z_4) / 2)``, run towards each of the ``n_target_classes``
    classes the model ranks highest after the true one, each run on the samples not yet fooled.
    Labels are the true classes: an untargeted attack (success means a wrong prediction), so
    there is no ``targeted`` option.

    Arguments (order and defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K >= 4].
        norm ("Linf" | "L2", or "linf" | "l2"): Default: "Linf".
        eps (float or tensor [B]): radius, in pixel units. Default: 8/255.
        steps (int): iterations per run. Default: 10.
        n_restarts (int): runs per target class (``restarts``: the same, give one). Default: 1.
        seed (int or None): seeds the random starts when no `generator` is given. Default: 0.
        eot_iter (int): gradients averaged per step. Default: 1.
        rho (float): the share of rising steps below which the step size halves. Default: 0.75.
        verbose (bool): print the robust accuracy after each run. Default: False.
        n_classes (int or None): the model's classes, torchattacks' way to say
            ``n_target_classes = n_classes - 1``. Default: None (10, as torchattacks, unless
            n_target_classes is given).
        loss (keyword, "dlr"): only the targeted DLR is taken.
        n_target_classes (keyword, int): target classes (AutoAttack's name; give it or
            n_classes). Default: 9.
        **options: early_stop, lower, upper, mean, std, amp, channels_last, backend, generator,
            model_mode: as for :class:`fastadv.PGD`.

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64, the
    true classes. Returns images of the same shape and dtype.

    Example:
        >>> attack = fastadv.APGDT(model, norm="Linf", eps=8/255, steps=100, n_restarts=1, n_classes=10)
        >>> adv_images = attack(images, labels)
    """

    supported_options = options_without("targeted")
    unsupported_because = {
        **APGD.unsupported_because,
        "targeted": "APGDT takes the true labels and picks its own targets",
    }

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float | torch.Tensor = 8 / 255,
        steps: int = 10,
        n_restarts: int | None = None,
        seed: int | None = 0,
        eot_iter: int = 1,
        rho: float = 0.75,
        verbose: bool = False,
        n_classes: int | None = None,
        *,
        restarts: int | None = None,
        loss: str = "dlr",
        n_target_classes: int | None = None,
        **options: Any,
    ):
        if loss != "dlr":
            raise ValueError(f"loss: APGDT ascends the targeted DLR loss only (loss='dlr'), got {loss!r}")
        if n_classes is not None:
            if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
                raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
            n_classes -= 1  # as a number of targets, to compare with n_target_classes
        name, targets = check.aliased("n_target_classes", n_target_classes, "n_classes", n_classes, _AUTOATTACK_TARGETS)
        if not isinstance(targets, int) or isinstance(targets, bool) or targets < 1:
            raise ValueError(f"{name} must be an int >= 1, got {targets!r}")
        self.n_target_classes = targets
        super().__init__(model, norm, eps, steps, n_restarts, seed, "dlr", eot_iter, rho, verbose, restarts=restarts,
                         **options)  # fmt: skip
        # every target class gets n_restarts runs
        self.restarts = self.n_restarts * self.n_target_classes

    def _run_targets(self, x, y, call, index):
        with torch.no_grad():
            logits = self._logits(x, call)
        if logits.shape[1] < 4:
            raise ValueError(f"model: APGDT's targeted DLR needs at least 4 classes, got {logits.shape[1]}")
        # runs 0..n_restarts-1 aim at the best other class, the next n_restarts at the second, ...
        rank = (index // self.n_restarts) % min(self.n_target_classes, logits.shape[1] - 1)
        others = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        return others.sort(dim=1, descending=True).indices[:, rank]

    def _objective(self, logits, y, targets):
        return targeted_dlr(logits, y, targets)

    def _recorded_loss(self, logits, y, objective):
        return self._loss(logits, y)  # the untargeted DLR of the true class
