"""Auto-PGD (Croce and Hein 2020) with the CE, DLR or margin loss."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import checks as check
from .. import ops
from .base import OPTIONS, Call
from .gradient import GradientAttack, RunState, drop_fooled
from .params import AttackParams, per_sample
from .result import Best, confidence_of

_SCHEDULE = "APGD's step-size schedule needs every step's loss"


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step size: w_j = ceil(p_j * steps), p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(q * steps - 1e-9) for q in p[1:]}  # (the tolerance absorbs 0.57 * 100 = 57.000000001)
    return sorted(m for m in marks if 1 <= m <= steps)


@dataclass
class _Run(RunState):
    """One APGD run's per-sample state (the paper's Algorithm 1)."""

    targets: torch.Tensor | None  # APGD-T's target classes, else None
    x_adv: torch.Tensor  # the iterate, and the one before it (for the momentum)
    x_old: torch.Tensor
    grad: torch.Tensor  # at x_adv: the objective's gradient, the model's class, the attack's loss
    predicted: torch.Tensor
    confidence: torch.Tensor  # the softmax probability of `predicted`
    loss: torch.Tensor
    eta: torch.Tensor  # the step size [b]
    # the point of highest objective so far, with what was computed there (no forward at the end)
    x_best: torch.Tensor
    grad_best: torch.Tensor
    obj_best: torch.Tensor
    predicted_best: torch.Tensor
    confidence_best: torch.Tensor
    loss_best: torch.Tensor
    obj_prev: torch.Tensor  # the objective at the previous iterate
    rises: torch.Tensor  # steps since the last checkpoint at which the objective rose
    obj_last_check: torch.Tensor  # at the last checkpoint: obj_best, and whether eta was halved
    reduced_last_check: torch.Tensor


class APGD(GradientAttack):
    r"""Auto-PGD: "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", Croce and Hein, ICML 2020, https://arxiv.org/abs/2003.01690.

    Distance: L-inf or L2. PGD with momentum 0.75 and a step size that starts at 2 eps and halves
    at checkpoints (after 22%, 41%, 57%, ... of the steps) when the loss rose in fewer than
    ``rho`` of the steps since the last one, or when it stalled without a halving; then the run
    restarts from its best point. Steps and projections are the fused ops. Returns, per sample,
    the latest iterate that fooled the model, else the point of highest loss.

    Arguments (order and defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        norm ("Linf" | "L2", or "linf" | "l2"): Default: "Linf".
        eps (float or tensor [B]): radius, in pixel units. Default: 8/255.
        steps (int): iterations (each one forward and backward pass, plus one at the start).
            Default: 10.
        n_restarts (int): runs from new random starts, on the samples not yet fooled; ``restarts``
            is the same argument under fastadv's name (give one of them). Default: 1.
        seed (int or None): seeds the random starts when no `generator` is given. Default: 0.
        loss ("ce" | "dlr" | "margin"): Default: "ce".
        eot_iter (int): gradients averaged per step (expectation over transformation, for models
            with randomness); each costs a forward and backward pass. Default: 1.
        rho (float): the share of rising steps below which the step size halves. Default: 0.75.
        verbose (bool): print the robust accuracy after each restart, as torchattacks. Default: False.
        **options: targeted, early_stop, lower, upper, mean, std, amp, channels_last, backend,
            generator, model_mode: as for :class:`fastadv.PGD`. Not early_stop_every or
            cuda_graph: the step-size schedule needs every step's loss.

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64 (the
    targets when targeted). Returns images of the same shape and dtype; ``attack(images,
    labels)`` and ``attack.run(images, labels).adv`` are the same images. Errors and model
    safety: as for :class:`fastadv.PGD`.

    Example:
        >>> attack = fastadv.APGD(model, norm="Linf", eps=8/255, steps=100, loss="dlr")
        >>> adv_images = attack(images, labels)
    """

    supported_options = OPTIONS
    unsupported_because = {
        "early_stop_every": _SCHEDULE,
        "cuda_graph": _SCHEDULE,
        "alpha": "APGD sets its own step size",
        "random_start": "APGD always starts at random",
    }
    _shown = ("norm", "eps", "steps", "n_restarts", "loss", "rho", "targeted", "early_stop", "amp")

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float | torch.Tensor = 8 / 255,
        steps: int = 10,
        n_restarts: int | None = None,
        seed: int | None = 0,
        loss: str = "ce",
        eot_iter: int = 1,
        rho: float = 0.75,
        verbose: bool = False,
        *,
        restarts: int | None = None,
        **options: Any,
    ):
        self.norm = check.norm(norm)
        if not isinstance(rho, (int, float)) or not 0 < rho <= 1:
            raise ValueError(f"rho must lie in (0, 1], got {rho!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.rho, self.seed = float(rho), seed
        self.eot_iter = check.positive_int("eot_iter", eot_iter)
        self.verbose = check.flag("verbose", verbose)
        self.n_restarts = check.positive_int(*check.aliased("n_restarts", n_restarts, "restarts", restarts, 1))
        super().__init__(model, eps=eps, alpha=0.0, steps=steps, random_start=True, restarts=self.n_restarts,
                         loss=loss, **options)  # fmt: skip

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``run(images, labels).adv``: APGD keeps its best point at every step anyway."""
        return self.run(images, labels).adv

    def _prepare(self, images, labels):
        x, y, call = super()._prepare(images, labels)
        if call.generator is None and self.seed is not None:
            call.generator = torch.Generator(device=images.device).manual_seed(self.seed)
        self._started = time.perf_counter()
        return x, y, call

    def _after_run(self, index: int, best: Best) -> None:
        if self.verbose:
            robust = 1 - float(best.success.float().mean())
            seconds = time.perf_counter() - self._started
            print(f"restart {index} - robust accuracy: {robust:.2%} - cum. time: {seconds:.1f} s")

    def _run_targets(self, x: torch.Tensor, y: torch.Tensor, call: Call, index: int) -> torch.Tensor | None:
        """Per-sample targets of the run `index` (APGD-T), or None."""
        return None

    def _objective(self, logits, y, targets) -> torch.Tensor:
        """The per-sample value the run ascends (its negation when targeted)."""
        loss = self._loss(logits, y)
        return -loss if self.targeted else loss

    def _recorded_loss(self, logits, y, objective) -> torch.Tensor:
        """The attack's loss of y, as AttackResult reports it (here the objective, unsigned)."""
        return -objective if self.targeted else objective

    def _one_run(self, run: RunState, best: Best, call: Call, index: int) -> None:
        s = self._first_point(run, best, call, index)
        marks, last_mark = set(checkpoints(self.steps)), 0
        for i in range(1, self.steps + 1):
            # z = P(x_adv + eta sign(grad)) in one fused step; the first step takes z as it is (no
            # momentum, already projected), later ones x_adv + 0.75 (z - x_adv) + 0.25 (x_adv - x_old),
            # computed in place in z and projected again
            z = self._fused_step(s.x_adv, s.grad, s.x, s.eta, s.params)
            if i > 1:
                torch.lerp(s.x_adv, z, 0.75, out=z)
                z.add_(s.x_adv, alpha=0.25).sub_(s.x_old, alpha=0.25)
                z = self._project(z, s.x, s.params)
            s.x_old, s.x_adv = s.x_adv, z
            obj, s.grad, s.predicted, s.confidence, s.loss, fooled = self._evaluate(z, s.y, s.targets, s.idx, best,
                                                                                     call)  # fmt: skip
            self._keep_best(s, obj)
            if i in marks:
                self._checkpoint(s, span=i - last_mark)
                last_mark = i
            self._ticker.step(i)
            if self.early_stop and i < self.steps:
                # (what `best` counts as fooling: a non-finite iterate does not, so it keeps attacking)
                s = drop_fooled(s, self._done(s, fooled), call)
                if s is None:
                    return
        # unfooled samples: the point of highest objective, with its class and loss as computed there
        success_best = self._success(s.predicted_best, s.y)
        best.add(s.idx, s.x_best, s.predicted_best, success_best, s.loss_best, final=True,
                 confidence=s.confidence_best)  # fmt: skip

    def _done(self, s: _Run, fooled: torch.Tensor) -> torch.Tensor:
        """bool [b]: the rows early stopping drops (those that fooled the model; APGDT's target
        pairs: every row of a sample that some row fooled)."""
        return fooled

    def _first_point(self, run: RunState, best: Best, call: Call, index: int) -> _Run:
        """The state at the random start, evaluated (and recorded in `best`)."""
        targets = self._run_targets(run.x, run.y, call, index)
        x_adv = self._start(run.x, run.params, call)
        obj, grad, predicted, confidence, loss, _ = self._evaluate(x_adv, run.y, targets, run.idx, best, call)
        b, device = run.x.shape[0], run.x.device
        eta = torch.full((b,), 2.0, device=device) * _per_sample_eps(run.params, b)
        return _Run(
            run.idx, run.params, run.x, run.y, targets=targets, x_adv=x_adv, x_old=x_adv.clone(), grad=grad,
            predicted=predicted, confidence=confidence, loss=loss, eta=eta, x_best=x_adv.clone(),
            grad_best=grad.clone(), obj_best=obj.clone(), predicted_best=predicted.clone(),
            confidence_best=confidence.clone(), loss_best=loss.clone(), obj_prev=obj,
            rises=torch.zeros(b, device=device), obj_last_check=obj.clone(),
            reduced_last_check=torch.zeros(b, dtype=torch.bool, device=device),
        )  # fmt: skip

    @staticmethod
    def _keep_best(s: _Run, obj: torch.Tensor) -> None:
        """Counts a rise of the objective and keeps, per sample, the point of highest objective."""
        s.rises.add_(obj > s.obj_prev)
        s.obj_prev = obj
        better = obj > s.obj_best
        rows = per_sample(better, s.x)
        torch.where(rows, s.x_adv, s.x_best, out=s.x_best)
        torch.where(rows, s.grad, s.grad_best, out=s.grad_best)
        torch.where(better, obj, s.obj_best, out=s.obj_best)
        torch.where(better, s.predicted, s.predicted_best, out=s.predicted_best)
        torch.where(better, s.confidence, s.confidence_best, out=s.confidence_best)
        torch.where(better, s.loss, s.loss_best, out=s.loss_best)

    def _checkpoint(self, s: _Run, span: int) -> None:
        """Halves the step where the objective rose in fewer than rho of the `span` steps since
        the last checkpoint, or stalled without a halving there; those samples go back to their
        best point."""
        halve = (s.rises <= self.rho * span) | (~s.reduced_last_check & (s.obj_last_check >= s.obj_best))
        s.eta = torch.where(halve, s.eta / 2, s.eta)
        s.x_adv = torch.where(per_sample(halve, s.x), s.x_best, s.x_adv)
        s.grad = torch.where(per_sample(halve, s.x), s.grad_best, s.grad)
        s.reduced_last_check, s.obj_last_check = halve, s.obj_best.clone()
        s.rises.zero_()

    def _evaluate(self, x_adv, y, targets, idx, best: Best, call: Call):
        """Forward and backward at x_adv; records the iterate in `best`. Returns the objective,
        its input gradient, the model's classes and their softmax probabilities, the attack's loss
        of y and whether it fooled the
        model as `best` counts it (a non-finite iterate never does)."""

        def objective(logits):
            return self._objective(logits, y, targets)

        logits, obj, grad = self._loss_and_grad(x_adv, y, call, loss_fn=objective)
        if self.eot_iter > 1:  # a randomized model: the mean of eot_iter gradients
            for _ in range(self.eot_iter - 1):
                grad += self._loss_and_grad(x_adv, y, call, loss_fn=objective)[2]
            grad /= self.eot_iter
        predicted = logits.argmax(1)
        loss = self._recorded_loss(logits, y, obj)
        confidence = confidence_of(logits, predicted)
        fooled = best.record_step(idx, x_adv, predicted, self._success(predicted, y), loss, confidence=confidence)
        return obj, grad, predicted, confidence, loss, fooled

    def _fused_step(self, x_adv, grad, x, eta, params: AttackParams) -> torch.Tensor:
        step = ops.linf_step if self.norm == "linf" else ops.l2_step
        # the objective is already signed for targeted runs: always step up; a new tensor, since
        # the momentum needs x_adv too
        return step(x_adv, grad, x, params.eps, eta, params.lower, params.upper, backend=self.backend)


def _per_sample_eps(params: AttackParams, batch: int) -> float | torch.Tensor:
    """eps as a number or a float32 [batch] tensor (the step size is per sample)."""
    eps = params.eps
    if isinstance(eps, torch.Tensor) and eps.numel() > 1:
        if eps.numel() != batch:
            raise ValueError("eps: APGD takes a number or one eps per sample")
        eps = eps.reshape(-1).float()
    return eps
