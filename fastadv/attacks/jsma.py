"""JSMA (Papernot et al. 2016): the saliency-map attack on pairs of pixels, batched."""

from __future__ import annotations

from typing import Any

import torch

from .. import checks as check
from .base import Attack, Call, options_without
from .params import per_sample
from .result import AttackResult, confidence_of

# Pair scores held at once: [samples, n, n] float32 is cut into chunks of about this many entries.
_PAIR_CHUNK = 1 << 24


class JSMA(Attack):
    r"""JSMA: "The Limitations of Deep Learning in Adversarial Settings", Papernot et al.,
    IEEE EuroS&P 2016, https://arxiv.org/abs/1511.07528.

    Distance: L0 (the number of changed input values), bounded by ``gamma``. Each step takes the
    gradients of the target logit (alpha) and of the sum of the other logits (beta) and picks, per
    sample, the pair of input values (p, q) still in the search domain with alpha_p + alpha_q > 0
    and beta_p + beta_q < 0 (the signs flip when theta < 0) that maximises
    ``-(alpha_p + alpha_q)(beta_p + beta_q)``; both values move by ``theta`` (clamped to the
    bounds) and leave the domain. A sample stops when it reaches its target (untargeted: when it is
    fooled), when ``gamma`` of its values have changed, or when no pair qualifies. All samples step
    together (one host sync per step); the pair search costs O(n^2) per sample for n values per
    image (about 65k pairs at 16x16, 9.4M at 3x32x32), so JSMA suits small images.

    Arguments (defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        theta (float): the change of each chosen value, in pixel units (negative: decrease). Default: 1.0.
        gamma (float): the largest share of the input values that may change, in (0, 1]. Default: 0.1.
        **options: targeted, lower, upper, mean, std, amp, channels_last, backend, generator,
            model_mode: as for :class:`fastadv.PGD`. Without ``targeted`` each sample is pushed
            towards a random other class drawn from ``generator`` (as torchattacks) and stops once
            it is misclassified. JSMA always stops a sample on success (no ``early_stop``).

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64 (the
    targets when targeted). Returns images of the same shape and dtype.

    Example:
        >>> adv_images = fastadv.JSMA(model, theta=1.0, gamma=0.1, targeted=True)(images, target_labels)
    """

    norm = "l0"
    supported_options = options_without("early_stop")
    unsupported_because = {"early_stop": "JSMA always stops a sample once it succeeds"}
    _shown = ("theta", "gamma", "targeted", "amp")

    def __init__(self, model: Any, theta: float = 1.0, gamma: float = 0.1, **options: Any):
        super().__init__(model, **options)
        self.theta = check.number("theta", theta)
        if self.theta == 0:
            raise ValueError("theta must not be 0 (no pixel would change)")
        self.gamma = check.number("gamma", gamma, above=0, at_most=1)

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        b, n = x.shape[0], x[0].numel()
        flat_shape = (b, n)
        low = torch.as_tensor(per_sample(call.params.lower, x), dtype=torch.float32, device=x.device)
        high = torch.as_tensor(per_sample(call.params.upper, x), dtype=torch.float32, device=x.device)
        low, high = low.expand_as(x).reshape(flat_shape), high.expand_as(x).reshape(flat_shape)
        adv = x.reshape(flat_shape).float().clone()  # the working copy, one row per sample
        increase = self.theta > 0
        domain = adv < high if increase else adv > low
        max_pairs = int(n * self.gamma) // 2  # so that at most gamma * n values change

        success = torch.zeros(b, dtype=torch.bool, device=x.device)
        margin = torch.full((b,), float("nan"), device=x.device)
        predicted = torch.full((b,), -1, dtype=torch.int64, device=x.device)
        confidence = torch.full((b,), float("nan"), device=x.device)
        steps_used = torch.zeros(b, dtype=torch.int64, device=x.device)
        targets = y if self.targeted else None
        active = torch.arange(b, device=x.device)
        for step in range(max_pairs + 1):
            point = call.layout(adv.index_select(0, active).to(x.dtype).view(-1, *x.shape[1:]))
            point.requires_grad_(step < max_pairs)
            logits = self._logits(point, call)
            if targets is None:  # untargeted: a random other class per sample, drawn once
                shift = torch.randint(1, logits.shape[1], (b,), generator=call.generator, device=x.device)
                targets = (y + shift) % logits.shape[1]
            y_active, t_active = y.index_select(0, active), targets.index_select(0, active)
            done = self._success(logits.detach().argmax(1), y_active)
            with torch.no_grad():
                z = logits.float()
                others = z.scatter(1, t_active.unsqueeze(1), float("-inf")).amax(1)
                margin.index_copy_(0, active, z.gather(1, t_active.unsqueeze(1)).squeeze(1) - others)
                predicted.index_copy_(0, active, z.argmax(1))
                confidence.index_copy_(0, active, confidence_of(z, z.argmax(1)))
                success.index_copy_(0, active, done)
            if step == max_pairs or bool(done.all()):  # one sync per step: the batch shrinks
                break
            target_logit = logits.gather(1, t_active.unsqueeze(1)).sum()
            alpha = self._input_grad(target_logit, point, retain_graph=True)
            beta = self._input_grad(logits.sum() - target_logit, point)
            steps_used.index_add_(0, active, torch.ones_like(active))
            with torch.no_grad():
                keep = ~done
                moving = active[keep]
                alpha = alpha[keep].float().reshape(-1, n)
                beta = beta[keep].float().reshape(-1, n)
                p, q, found = _best_pairs(alpha, beta, domain.index_select(0, moving), increase)
                moving, p, q = moving[found], p[found], q[found]
                for position in (p, q):
                    value = adv[moving, position] + self.theta
                    adv[moving, position] = torch.minimum(torch.maximum(value, low[moving, position]),
                                                          high[moving, position])  # fmt: skip
                    domain[moving, position] = False
                active = moving
            if active.numel() == 0:
                break
        return AttackResult(adv.view_as(x).to(x.dtype), success, margin, steps_used, predicted, confidence=confidence)


def _best_pairs(alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor, increase: bool):
    """Per row: the pair (p, q), p != q, both in the domain, with the largest saliency
    -(alpha_p + alpha_q)(beta_p + beta_q) among pairs whose alpha sum has the sign of the change
    and whose beta sum the other; and whether one exists. [m, n] inputs -> three [m] tensors."""
    m, n = alpha.shape
    p = torch.zeros(m, dtype=torch.int64, device=alpha.device)
    q = torch.zeros_like(p)
    found = torch.zeros(m, dtype=torch.bool, device=alpha.device)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=alpha.device)
    chunk = max(1, _PAIR_CHUNK // (n * n))
    for start in range(0, m, chunk):
        rows = slice(start, start + chunk)
        a = alpha[rows].unsqueeze(2) + alpha[rows].unsqueeze(1)
        bt = beta[rows].unsqueeze(2) + beta[rows].unsqueeze(1)
        valid = (a > 0) & (bt < 0) if increase else (a < 0) & (bt > 0)
        valid &= domain[rows].unsqueeze(2) & domain[rows].unsqueeze(1) & off_diagonal
        score = torch.where(valid, -a * bt, torch.full_like(a, float("-inf"))).flatten(1)
        best, index = score.max(dim=1)
        p[rows], q[rows], found[rows] = index // n, index % n, best > float("-inf")
    return p, q, found
