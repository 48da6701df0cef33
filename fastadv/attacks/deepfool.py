"""DeepFool (Moosavi-Dezfooli et al. 2016), multi-class, batched."""

from __future__ import annotations

from typing import Any

import torch

from .. import checks as check
from .base import MODEL_IGNORES_IMAGES, Attack, Call, options_without
from .params import per_sample
from .result import AttackResult, confidence_of


class DeepFool(Attack):
    r"""DeepFool: "DeepFool: a simple and accurate method to fool deep neural networks",
    Moosavi-Dezfooli, Fawzi and Frossard, CVPR 2016, https://arxiv.org/abs/1511.04599.

    Distance: L2, minimised. At each step the model is linearised around the current point and
    each sample moves to the nearest linearised decision boundary among its candidate classes:
    ``r = (|f_l| + 1e-4) w_l / ||w_l||^2`` with ``f_k = z_k - z_y``, ``w_k = grad f_k`` and ``l =
    argmin_k |f_k| / ||w_k||``. The steps add up to ``r_tot`` and the image is ``clamp(x + (1 +
    overshoot) r_tot, lower, upper)``, as in the paper. All samples of the batch step together;
    a sample leaves the batch as soon as it is fooled (one host sync per step).

    Arguments (defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        steps (int): the most linearisation steps per sample. Default: 50.
        overshoot (float): how far past the boundary to go (>= 0). Default: 0.02.
        candidates (int): the classes linearised per sample: the label and the ``candidates - 1``
            others the model ranks highest on the clean image (the paper's ``num_classes``;
            each costs one backward pass per step). Default: 10.
        **options: lower, upper, mean, std, amp, channels_last, backend, generator, model_mode:
            as for :class:`fastadv.PGD`. DeepFool is untargeted and always stops a sample once it
            is fooled, so it takes no ``targeted`` and no ``early_stop``.

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64.
    Returns images of the same shape and dtype: the first point that fools the model, or the
    last one after ``steps`` steps.

    Example:
        >>> adv_images = fastadv.DeepFool(model, steps=50, overshoot=0.02)(images, labels)
    """

    norm = "l2"
    supported_options = options_without("targeted", "early_stop")
    unsupported_because = dict.fromkeys(
        ("targeted", "early_stop"), "DeepFool is untargeted and always stops a sample once it is fooled"
    )
    _shown = ("steps", "overshoot", "candidates", "amp")

    def __init__(self, model: Any, steps: int = 50, overshoot: float = 0.02, candidates: int = 10, **options: Any):
        super().__init__(model, **options)
        self.steps = check.positive_int("steps", steps)
        self.overshoot = check.number("overshoot", overshoot, at_least=0)
        self.candidates = check.positive_int("candidates", candidates)
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2 (the label and another class), got {candidates}")

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        b = x.shape[0]
        low = per_sample(call.params.lower, x)
        high = per_sample(call.params.upper, x)
        adv = x.clone()
        r_total = torch.zeros_like(x, dtype=torch.float32)
        success = torch.zeros(b, dtype=torch.bool, device=x.device)
        margin = torch.full((b,), float("nan"), device=x.device)
        predicted = torch.full((b,), -1, dtype=torch.int64, device=x.device)
        confidence = torch.full((b,), float("nan"), device=x.device)
        steps_used = torch.zeros(b, dtype=torch.int64, device=x.device)
        active = torch.arange(b, device=x.device)  # the samples not fooled yet
        classes = None  # [b, candidates]: the label first, then the clean top-ranked others
        for step in range(self.steps + 1):
            point = call.layout(adv.index_select(0, active)).requires_grad_(step < self.steps)
            logits = self._logits(point, call)
            y_active = y.index_select(0, active)
            fooled = logits.argmax(1) != y_active
            with torch.no_grad():
                f = logits.float() - logits.float().gather(1, y_active.unsqueeze(1))
                predicted.index_copy_(0, active, logits.argmax(1))
                confidence.index_copy_(0, active, confidence_of(logits, logits.argmax(1)))
                margin.index_copy_(0, active, -f.scatter(1, y_active.unsqueeze(1), float("-inf")).amax(1))
                success.index_copy_(0, active, fooled)
            keep = ~fooled
            if step == self.steps or not bool(keep.any()):  # one sync per step: the batch shrinks
                break
            if classes is None:
                classes = self._candidate_classes(logits.detach(), y)
            z = logits.gather(1, classes.index_select(0, active))
            grads = self._candidate_grads(z, point)
            with torch.no_grad():
                w = (grads[:, 1:] - grads[:, :1]).float().flatten(2)  # [b, k-1, n]
                f_k = (z[:, 1:] - z[:, :1]).float().abs()
                w_norm = w.norm(dim=2)
                # a class whose linearisation is flat (w = 0) can never be reached
                distance = torch.where(w_norm > 0, f_k / w_norm.clamp_min(1e-12), torch.full_like(f_k, float("inf")))
                nearest = distance.argmin(1, keepdim=True)
                w_l = w.gather(1, nearest.unsqueeze(2).expand(-1, 1, w.shape[2])).squeeze(1)
                f_l = f_k.gather(1, nearest).squeeze(1)
                scale = (f_l + 1e-4) / w_norm.gather(1, nearest).squeeze(1).pow(2).clamp_min(1e-12)
                r = (scale.unsqueeze(1) * w_l).view_as(point)
                moving = active[keep]
                steps_used.index_add_(0, moving, torch.ones_like(moving))
                r_total.index_add_(0, moving, r[keep])
                x_moving, r_moving = x.index_select(0, moving), r_total.index_select(0, moving)
                stepped = x_moving.float() + (1 + self.overshoot) * r_moving
                stepped = torch.minimum(torch.maximum(stepped, _at(low, moving)), _at(high, moving))
                adv.index_copy_(0, moving, stepped.to(x.dtype))
                active = moving
        return AttackResult(adv, success, margin, steps_used, predicted, confidence=confidence)

    def _candidate_grads(self, z: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """[b, k, ...]: the gradient of each candidate logit (one backward pass each). A constant
        logit has gradient 0; a model none of whose candidate logits depends on the images is
        the model error (a plain callable that detaches its input has no other symptom)."""
        k = z.shape[1]
        grads = [self._input_grad(z[:, j].sum(), point, retain_graph=j < k - 1, unused_ok=True) for j in range(k)]
        if all(g is None for g in grads):
            raise ValueError(MODEL_IGNORES_IMAGES)
        return torch.stack([torch.zeros_like(point) if g is None else g for g in grads], 1)

    def _candidate_classes(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[b, k]: each sample's label, then the k - 1 other classes with the largest logits."""
        k = min(self.candidates, logits.shape[1])
        others = logits.float().scatter(1, y.unsqueeze(1), float("-inf"))
        return torch.cat([y.unsqueeze(1), others.topk(k - 1, dim=1).indices], dim=1)


def _at(bound: float | torch.Tensor, positions: torch.Tensor) -> float | torch.Tensor:
    """A bound for the samples at `positions` (a per-sample bound is indexed)."""
    if isinstance(bound, torch.Tensor) and bound.dim() >= 1 and bound.shape[0] > 1:
        return bound.index_select(0, positions)
    return torch.as_tensor(bound, dtype=torch.float32, device=positions.device)
