"""What an attack returns, and the per-sample bookkeeping that builds it across steps and
restarts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .params import per_sample


@dataclass(frozen=True)
class AttackResult:
    """What :meth:`Attack.run` returns, one entry per sample of the batch.

    adv: the adversarial images (images' shape and dtype). success: bool [B], the model's
    prediction on `adv` is wrong (untargeted) or is the target (targeted). loss: float32 [B], the
    attack's loss ("ce" or "margin", of the labels) at `adv`. steps_used: int64 [B], the gradient
    steps (forward and backward passes) spent on the sample, over all restarts. predicted: int64
    [B], the model's class for `adv` (as computed during the attack, under its amp setting; -1
    for an empty run). non_finite: bool [B], the attack produced a candidate with NaN or
    infinite values for the sample (a model whose input gradient is infinite, say); such a
    candidate never counts as fooling the model, and `adv` is then the sample's last finite
    candidate or its clean image (whose loss is NaN). norm: float32 [B] or None, for the
    minimal-norm attacks that report it (FAB): the norm of the smallest adversarial
    perturbation found, whatever its size (inf where none was found). queries: int64 [B], the
    model evaluations spent on the sample, for the attacks that count them (Square); None otherwise.
    confidence: float32 [B] or None, the softmax probability of `predicted` in the forward pass
    that gave `predicted` (on `adv` itself, as the attack ran the model: its mean/std, amp,
    layout and model mode), so that a caller reading the model's confidence (the calibration
    error of an evaluation) needs no forward pass of its own; None where nothing was tracked.
    """

    adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    steps_used: torch.Tensor
    predicted: torch.Tensor | None = None
    non_finite: torch.Tensor | None = None
    norm: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0


def confidence_of(logits: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """float32 [b]: the softmax probability (over logits [b, K], in float32) of class `predicted` [b]."""
    return torch.softmax(logits.detach().float(), dim=1).gather(1, predicted.view(-1, 1)).squeeze(1)


def finite_rows(t: torch.Tensor) -> torch.Tensor:
    """bool [B]: the samples of `t` [B, ...] without NaN or infinite values."""
    return t.flatten(1).isfinite().all(1) if t.dim() > 1 else t.isfinite()


class Best:
    """The result being built, per sample, across the steps and runs of a gradient attack. An
    iterate that fools the model is kept (the latest one found) and never replaced by one that
    does not; otherwise a run's final iterate is kept when its loss beats the runs before
    (ascending untargeted, descending targeted). A non-finite iterate is never kept and never
    fools the model; the sample is marked `non_finite`. `idx` arguments: the rows of the
    attack's batch that the given per-sample tensors belong to (None: all of them)."""

    def __init__(self, x: torch.Tensor, targeted: bool):
        b = x.shape[0]
        self.adv = x.clone()
        self.success = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.loss = torch.full((b,), float("nan"), device=x.device)
        self.objective = torch.full((b,), float("-inf"), device=x.device)
        self.steps = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.predicted = torch.full((b,), -1, dtype=torch.int64, device=x.device)
        self.confidence = torch.full((b,), float("nan"), device=x.device)
        self.non_finite = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.sign = -1.0 if targeted else 1.0

    def record_step(self, idx: torch.Tensor | None, x_adv: torch.Tensor, predicted: torch.Tensor, success: torch.Tensor,
                    loss: torch.Tensor, *, confidence: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """One step's iterate (see `add`), counted in `steps_used`. Returns `add`'s success."""
        success = self.add(idx, x_adv, predicted, success, loss, final=False, confidence=confidence)
        if idx is None:
            self.steps += 1
        else:
            self.steps.index_add_(0, idx, torch.ones_like(idx))
        return success

    def add(self, idx: torch.Tensor | None, x_adv: torch.Tensor, predicted: torch.Tensor, success: torch.Tensor,
            loss: torch.Tensor, final: bool, *, confidence: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Takes x_adv (and the model's class for it, `predicted`, with its softmax probability
        `confidence`, both from the forward pass on this very x_adv) where it fools the model, or
        (final iterates only) where it is the best failure so far; a non-finite x_adv neither.
        Returns the success that counts (`success` and finite). No host synchronisation."""
        finite = finite_rows(x_adv)
        success = success & finite
        objective = loss * self.sign
        take = success
        if final:
            old_success = self.success if idx is None else self.success.index_select(0, idx)
            old_objective = self.objective if idx is None else self.objective.index_select(0, idx)
            better = (objective > old_objective) | torch.isneginf(old_objective)
            take = success | (~old_success & better & finite)
        updates = (
            (self.adv, x_adv, per_sample(take, x_adv)),
            (self.loss, loss, take),
            (self.predicted, predicted, take),
            (self.confidence, confidence, take),
            (self.objective, objective, take),
            (self.success, success, success),
            (self.non_finite, ~finite, ~finite),
        )
        for target, new, mask in updates:
            if idx is None:
                torch.where(mask, new, target, out=target)  # in place: one op, no temporary
            else:
                target.index_copy_(0, idx, torch.where(mask, new, target.index_select(0, idx)))
        return success

    def result(self) -> AttackResult:
        return AttackResult(self.adv, self.success, self.loss, self.steps, self.predicted, self.non_finite,
                            confidence=self.confidence)  # fmt: skip
