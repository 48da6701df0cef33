"""Carlini-Wagner L2 (Carlini and Wagner 2017): Adam in tanh space, binary search over c."""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import checks as check
from .base import MODEL_IGNORES_IMAGES, Attack, Call, options_without, require_grad
from .params import per_sample
from .result import AttackResult, confidence_of

# A pixel exactly at a bound would sit at atanh(+-1) = +-inf in tanh space and never move.
_TANH_EDGE = 1 - 1e-6
# Carlini's "no upper bound on c found yet"
_NO_BOUND = 1e10


class CW(Attack):
    r"""CW-L2: "Towards Evaluating the Robustness of Neural Networks", Carlini and Wagner, IEEE S&P
    2017, https://arxiv.org/abs/1608.04644.

    Distance: L2, minimised. Each sample's image is written as ``lower + (upper - lower) *
    (tanh(w) + 1) / 2`` (always inside the bounds), and Adam minimises
    ``||x_adv - x||_2^2 + c * f(x_adv)`` over w, where ``f = max(z_y - max_{i != y} z_i, -kappa)``
    (targeted: ``max(max_{i != t} z_i - z_t, -kappa)``) on the logits z. Among the iterates that
    fool the model with margin kappa, the one with the smallest L2 distance is kept. With
    ``binary_search_steps > 1`` each sample's c is searched as in the paper: halved towards the
    last success, multiplied by 10 while none is found; every round starts again from the image.

    Arguments (defaults as torchattacks, which runs one round: binary_search_steps=1):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        c (float): the initial weight of the classification term. Default: 1.
        kappa (float): the confidence margin (>= 0). Default: 0.
        steps (int): Adam steps per round. Default: 50.
        lr (float): Adam's learning rate. Default: 0.01.
        binary_search_steps (int): rounds of the search over c (the paper uses 9). Default: 1.
        abort_early (bool): end a round when its total cost has not fallen by 0.01% over the
            last tenth of the steps (checked every tenth: one host sync each). Default: True.
        **options: targeted, lower, upper, mean, std, amp, channels_last, backend, generator,
            model_mode: as for :class:`fastadv.PGD`. CW has no ``early_stop``: it keeps
            shrinking a perturbation after the first success.

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64 (the
    targets when targeted). Returns images of the same shape and dtype: for a sample never
    fooled, the image itself (``run(...).success`` is then False).

    Example:
        >>> attack = fastadv.CW(model, c=1, kappa=0, steps=100, lr=0.01, binary_search_steps=5)
        >>> adv_images = attack(images, labels)
    """

    norm = "l2"
    supported_options = options_without("early_stop")
    unsupported_because = {"early_stop": "CW minimises the perturbation after its first success; see abort_early"}
    _shown = ("c", "kappa", "steps", "lr", "binary_search_steps", "targeted", "amp")

    def __init__(
        self,
        model: Any,
        c: float = 1.0,
        kappa: float = 0.0,
        steps: int = 50,
        lr: float = 0.01,
        binary_search_steps: int = 1,
        abort_early: bool = True,
        **options: Any,
    ):
        super().__init__(model, **options)
        self.c = check.number("c", c, above=0)
        self.kappa = check.number("kappa", kappa, at_least=0)
        self.steps = check.positive_int("steps", steps)
        self.lr = check.number("lr", lr, above=0)
        self.binary_search_steps = check.positive_int("binary_search_steps", binary_search_steps)
        self.abort_early = check.flag("abort_early", abort_early)

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        b = x.shape[0]
        x32 = x.float()
        low = torch.as_tensor(per_sample(call.params.lower, x), dtype=torch.float32, device=x.device)
        span = torch.as_tensor(per_sample(call.params.upper, x), dtype=torch.float32, device=x.device) - low
        unit = (x32 - low) / span.clamp_min(1e-12) * 2 - 1
        w_start = torch.atanh(unit.clamp(-_TANH_EDGE, _TANH_EDGE))

        c = torch.full((b,), self.c, device=x.device)
        c_low, c_high = torch.zeros_like(c), torch.full_like(c, _NO_BOUND)
        best_l2 = torch.full((b,), math.inf, device=x.device)
        best_adv = x.clone()
        best_margin = torch.full((b,), math.nan, device=x.device)
        best_predicted = torch.full((b,), -1, dtype=torch.int64, device=x.device)
        best_confidence = torch.full((b,), math.nan, device=x.device)
        steps_used = torch.zeros(b, dtype=torch.int64, device=x.device)

        for search in range(self.binary_search_steps):
            found = torch.zeros(b, dtype=torch.bool, device=x.device)
            w = w_start.clone()
            optimizer = torch.optim.Adam([w], lr=self.lr)
            check_every, last_cost = max(self.steps // 10, 1), math.inf
            for step in range(self.steps):
                w.requires_grad_(True)
                adv = low + span * (torch.tanh(w) + 1) / 2
                adv_image = adv.to(x.dtype).view_as(adv)  # (a node of its own: see _cost_grad)
                l2_squared = (adv - x32).flatten(1).pow(2).sum(1)
                logits = self._logits(adv_image, call)
                margin = self._margin(logits, y)
                cost = l2_squared + c * margin.clamp_min(-self.kappa)
                w.grad = self._cost_grad(cost, w, adv_image if search == step == 0 else None)
                w.requires_grad_(False)
                optimizer.step()
                steps_used += 1

                with torch.no_grad():
                    # fooled with margin kappa: then also the argmax is wrong (or the target)
                    fooled = margin < -self.kappa
                    l2 = (adv_image.float() - x32).flatten(1).norm(dim=1)
                    better = fooled & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best_adv = torch.where(per_sample(better, x), adv_image, best_adv)
                    best_margin = torch.where(better, margin, best_margin)
                    predicted = logits.argmax(1)
                    best_predicted = torch.where(better, predicted, best_predicted)
                    best_confidence = torch.where(better, confidence_of(logits, predicted), best_confidence)
                    found |= fooled
                if self.abort_early and step % check_every == check_every - 1:
                    total = float(cost.detach().sum())
                    if total > last_cost * 0.9999:
                        break
                    last_cost = total
            # the paper's search: bisect below a success, grow c tenfold until the first one
            c_high = torch.where(found, torch.minimum(c_high, c), c_high)
            c_low = torch.where(found, c_low, torch.maximum(c_low, c))
            c = torch.where(c_high < _NO_BOUND, (c_low + c_high) / 2, c * 10)

        success = torch.isfinite(best_l2)
        if not bool(success.all()):  # the samples never fooled are returned as they came
            with torch.no_grad():
                logits = self._logits(x, call)
            best_margin = torch.where(success, best_margin, self._margin(logits, y))
            clean = logits.argmax(1)
            best_predicted = torch.where(success, best_predicted, clean)
            best_confidence = torch.where(success, best_confidence, confidence_of(logits, clean))
        return AttackResult(best_adv, success, best_margin, steps_used, best_predicted, confidence=best_confidence)

    def _cost_grad(self, cost: torch.Tensor, w: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """d cost.sum() / d w. With `image` (the model's input, at the first step): the model
        error when the logits do not reach it, which the distance term would otherwise hide
        (a detached nn.Module, or a plain callable whose own parameters still require grad)."""
        if image is None:
            return self._input_grad(cost.sum(), w)
        require_grad(cost)
        grad, image_grad = torch.autograd.grad(cost.sum(), (w, image), allow_unused=True)
        if image_grad is None:
            raise ValueError(MODEL_IGNORES_IMAGES)
        return grad

    def _margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z_y - max_{i != y} z_i (targeted: max_{i != t} z_i - z_t), float32 [b]: below 0 where
        the model is fooled."""
        logits = logits.float()
        label_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
        return other - label_logit if self.targeted else label_logit - other
