"""The loop every gradient attack runs on: FGSM, PGD, PGD-L2 and MI-FGSM, and APGD's restarts.

Contract (docs/DESIGN.md, "The attack contract"): input-only gradients of the summed loss,
restarts keeping the best result per sample, early stopping that compacts the batch
(`drop_fooled`, shared with APGD). Every step goes through the fused ops in `fastadv.ops`.

A subclass picks the norm and may transform the gradient before the step (MI-FGSM's momentum)
through `_init_state` and `_direction`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .. import checks as check
from .. import ops
from ._cuda_graph import GraphedSteps, graph_key
from ._losses import LOSSES
from .base import GRADIENT_OPTIONS, Attack, Call, _own_arguments
from .params import AttackParams, per_sample
from .progress import Ticker
from .result import AttackResult, Best, confidence_of

# Graphs kept per attack (one per input shape): each holds a private memory pool.
_MAX_GRAPHS = 4


class StepBudgetWarning(UserWarning):
    """steps * alpha < eps: the iterate cannot reach the edge of the eps-ball."""


def _warn_if_short_of_the_edge(attack: GradientAttack) -> None:
    """Warns (once, when the attack is built) when steps * alpha < eps for some sample: each
    step moves the iterate by at most alpha (in the attack's norm), so it never gets further
    than steps * alpha from where it started, short of the ball's edge: the attack is weaker
    than its eps says (torchattacks' alpha 2/255 with 10 steps at eps 0.1). Tensor budgets are
    compared on the CPU only (no device sync at construction)."""
    eps, alpha = attack.eps, attack.alpha
    if any(isinstance(p, torch.Tensor) and p.device.type != "cpu" for p in (eps, alpha)):
        return
    try:
        short = torch.as_tensor(alpha, dtype=torch.float64) * attack.steps < torch.as_tensor(eps, dtype=torch.float64)
    except RuntimeError:  # shapes that do not broadcast: the attack's own checks say so at the call
        return
    if bool(short.any()):
        reach = float((torch.as_tensor(alpha, dtype=torch.float64) * attack.steps).min())
        warnings.warn(
            f"{type(attack).__name__}: steps * alpha = {reach:.4g} < eps = {float(torch.as_tensor(eps).max()):.4g}: "
            "the iterate moves at most steps * alpha from where it starts, so it never reaches the edge of the "
            "eps-ball and the attack is weaker than its eps says; use alpha >= eps / steps (Madry et al.: "
            "alpha = 2.5 * eps / steps)",
            StepBudgetWarning,
            stacklevel=4,
        )


@dataclass
class RunState:
    """The samples one run still attacks: their rows in the attack's batch (`idx`; None: every
    row), their parameters, images and labels. A loop subclasses it with the per-sample state it
    keeps; every tensor field has one entry per sample in dim 0, so that `select` (early
    stopping's compaction) moves them all."""

    idx: torch.Tensor | None
    params: AttackParams
    x: torch.Tensor
    y: torch.Tensor

    def select(self, keep: torch.Tensor, call: Call) -> RunState:
        """The state of the samples at rows `keep`; image-shaped tensors in the call's layout."""
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "idx":
                value = keep if value is None else value.index_select(0, keep)
            elif isinstance(value, AttackParams):
                value = value.select(keep, self.x.shape[0])
            elif isinstance(value, torch.Tensor):
                value = value.index_select(0, keep)
                value = call.layout(value) if value.dim() == self.x.dim() else value
            values[field.name] = value
        return dataclasses.replace(self, **values)


State = TypeVar("State", bound=RunState)


def drop_fooled(run: State, success: torch.Tensor, call: Call) -> State | None:
    """Early stopping: `run` without the samples that fooled the model (bool [b] `success`; their
    iterates are already recorded), or None when none is left. One host sync: the new size."""
    keep = (~success).nonzero().squeeze(1)  # (nonzero waits for the device: the sync)
    if keep.numel() == 0:
        return None
    return run if keep.numel() == success.shape[0] else run.select(keep, call)


@dataclass
class _Steps(RunState):
    x_adv: torch.Tensor
    grad: torch.Tensor | None = None
    state: torch.Tensor | None = None  # `_init_state`'s (MI-FGSM's momentum)


class GradientAttack(Attack):
    """Base class of the gradient attacks (see FGSM, PGD, PGDL2, MIFGSM for the arguments).

    Call ``attack(images, labels)`` for the adversarial images, or ``attack.run(images, labels)``
    for an :class:`AttackResult` with per-sample success, loss and steps used.
    """

    supported_options = GRADIENT_OPTIONS
    _shown = ("eps", "alpha", "steps", "random_start", "targeted", "restarts", "loss", "early_stop", "amp")

    def __init__(
        self,
        model: Any,
        *,
        eps: float | torch.Tensor,
        alpha: float | torch.Tensor,
        steps: int,
        random_start: bool,
        restarts: int = 1,
        loss: str = "ce",
        early_stop_every: int = 1,
        cuda_graph: bool = False,
        eot_samples: int = 1,
        **options: Any,
    ):
        super().__init__(model, **options)
        self.eot_samples = check.positive_int("eot_samples", eot_samples)
        self.early_stop_every = check.positive_int("early_stop_every", early_stop_every)
        self.cuda_graph = check.flag("cuda_graph", cuda_graph)
        self.graph_status = "not requested" if not self.cuda_graph else "not run yet"
        self._graphs: dict[tuple, GraphedSteps] = {}
        self._graph_warnings: set[str] = set()
        self.eps = check.parameter("eps", eps, nonnegative=True)
        self.alpha = check.parameter("alpha", alpha, nonnegative=True)
        self.steps = check.positive_int("steps", steps)
        self.random_start = check.flag("random_start", random_start)
        self.restarts = check.positive_int("restarts", restarts)
        if self.restarts > 1 and not self.random_start:
            raise ValueError(
                "restarts > 1 needs random_start=True: without a random start every restart repeats the first"
            )
        self.loss = check.choice("loss", loss, LOSSES)
        if "alpha" in _own_arguments(type(self).__init__):  # (APGD sets its own step sizes)
            _warn_if_short_of_the_edge(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The adversarial images. With one run and no early stopping this is the final iterate,
        as in torchattacks, at the cost of the steps alone; otherwise it is ``run(...).adv``."""
        return self._attack(images, labels, track=self.early_stop or self.restarts > 1).adv

    def run(self, images: torch.Tensor, labels: torch.Tensor) -> AttackResult:
        """Attacks a batch: images [B, ...] in [lower, upper], labels [B] class indices (the
        targets when targeted). Returns an :class:`AttackResult`; the caller's tensors and
        model are left as they were, also when this raises.

        The final iterate is evaluated (one forward pass more than the steps), and a sample
        that fooled the model at some step is never returned unfooled: its latest adversarial
        iterate replaces a final one that is not."""
        return self._attack(images, labels, track=True)

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        """track=False (one run, no early stop, only the images wanted): the steps alone, and
        the final iterate in a result whose other fields are unset."""
        if not track:
            if self.cuda_graph:
                adv = self._graphed_steps(x, y, call)
                if adv is not None:
                    return AttackResult(adv, None, None, None)  # type: ignore[arg-type]
            return self._steps_only(x, y, call)
        if self.cuda_graph:
            self.graph_status = "uncaptured: run(), early stopping and restarts track every step"
        best = Best(x, self.targeted)
        run = RunState(None, call.params, x, y)
        self._ticker = Ticker(self.progress_hook, self.restarts * self.steps, "steps")
        for index in range(self.restarts):
            self._ticker.run(index * self.steps)
            self._one_run(run, best, call, index)
            self._after_run(index, best)
            keep = (~best.success).nonzero().squeeze(1)  # restarts attack the survivors only
            if keep.numel() == 0:
                break
            run = RunState(None, call.params, x, y).select(keep, call)
        return best.result()

    def _after_run(self, index: int, best: Best) -> None:
        """Called after each run (APGD's verbose report)."""

    # --- the loop -------------------------------------------------------------------------

    def _one_run(self, run: RunState, best: Best, call: Call, index: int) -> None:
        """One run from a new start on `run`'s samples, recorded in `best`."""
        x_adv = self._start(run.x, run.params, call)
        steps = _Steps(run.idx, run.params, run.x, run.y, x_adv, state=self._init_state(x_adv))
        for step in range(self.steps):
            logits, loss, steps.grad = self._loss_and_grad(steps.x_adv, steps.y, call)
            predicted = logits.argmax(1)
            # (a non-finite iterate does not count as fooling: early stopping keeps attacking it)
            success = best.record_step(steps.idx, steps.x_adv, predicted, self._success(predicted, steps.y), loss,
                                       confidence=confidence_of(logits, predicted))  # fmt: skip
            if self.early_stop and (step + 1) % self.early_stop_every:
                # between compactions fooled samples stay where they are, without a host sync
                direction = self._direction(steps.grad, steps.state).masked_fill(per_sample(success, steps.grad), 0)
            else:
                if self.early_stop:
                    steps = drop_fooled(steps, success, call)
                    if steps is None:
                        return
                direction = self._direction(steps.grad, steps.state)
            steps.x_adv = self._step(steps.x_adv, direction, steps.x, steps.params)
            self._ticker.step(step + 1)
        with torch.no_grad():
            logits = self._logits(steps.x_adv, call)
            loss = self._loss(logits, steps.y)
        predicted = logits.argmax(1)
        best.add(steps.idx, steps.x_adv, predicted, self._success(predicted, steps.y), loss, final=True,
                 confidence=confidence_of(logits, predicted))  # fmt: skip

    def _steps_only(self, x: torch.Tensor, y: torch.Tensor, call: Call) -> AttackResult:
        x_adv = self._start(x, call.params, call)
        state = self._init_state(x_adv)
        for _ in range(self.steps):
            _, _, grad = self._loss_and_grad(x_adv, y, call)
            x_adv = self._step(x_adv, self._direction(grad, state), x, call.params)
        return AttackResult(x_adv, None, None, None)  # type: ignore[arg-type]

    def _graphed_steps(self, x: torch.Tensor, y: torch.Tensor, call: Call) -> torch.Tensor | None:
        """The final iterate through a CUDA graph of the step (captured at the first call with
        this shape, replayed after), or None with the reason in `graph_status` when the step
        cannot be captured: then the caller runs it uncaptured."""
        reason = None
        if type(self)._direction is not GradientAttack._direction:
            reason = f"{type(self).__name__}'s step carries state between steps"
        elif x.device.type != "cuda":
            reason = f"images are on {x.device.type}, CUDA graphs need a GPU"
        key = graph_key(x, y, call.params)
        if reason is None and key not in self._graphs:
            if len(self._graphs) >= _MAX_GRAPHS:  # each graph holds its own memory pool
                self._graphs.pop(next(iter(self._graphs)))
            try:
                self._graphs[key] = GraphedSteps(self._graph_step, x, y, call)
                self.graph_status = "captured"
            except Exception as error:  # a model that syncs with the host, an op capture rejects
                reason = f"capture failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                torch.cuda.synchronize(x.device)
        elif reason is None:
            self.graph_status = "replayed"
        if reason is not None:
            self.graph_status = f"uncaptured: {reason}"
            if reason not in self._graph_warnings:
                self._graph_warnings.add(reason)
                warnings.warn(f"cuda_graph: {reason}; running the steps uncaptured", RuntimeWarning, stacklevel=4)
            return None
        start = self._start(x, call.params, call)
        return self._graphs[key](x, y, start, call, self.steps)

    def _graph_step(self, x_adv: torch.Tensor, y: torch.Tensor, x: torch.Tensor, call: Call) -> int:
        """The step a CUDA graph captures: x_adv moved in place. Returns the model's class count."""
        logits, _, grad = self._loss_and_grad(x_adv, y, call)
        self._step(x_adv, grad, x, call.params)
        return logits.shape[1]

    def _loss_and_grad(self, x_adv: torch.Tensor, y: torch.Tensor, call: Call, loss_fn=None):
        """(logits, per-sample loss, gradient of the summed loss with respect to x_adv);
        `loss_fn(logits)` replaces the attack's loss of y (APGD-T's targeted DLR). With
        eot_samples = n > 1 (a randomized model: expectation over transformation), the gradient
        is the mean over n forward and backward passes; logits and loss are the first pass's."""
        x_adv.requires_grad_(True)
        try:
            for draw in range(self.eot_samples):
                logits_n = self._logits(x_adv, call)
                loss_n = self._loss(logits_n, y) if loss_fn is None else loss_fn(logits_n)
                # Summed, not averaged: a sample's gradient does not depend on the batch size.
                grad_n = self._input_grad(loss_n.sum(), x_adv)
                if draw == 0:
                    logits, loss, grad = logits_n, loss_n, grad_n
                else:
                    grad = grad + grad_n
            if self.eot_samples > 1:
                grad = grad / self.eot_samples
        finally:
            x_adv.requires_grad_(False)
        return logits.detach(), loss.detach(), grad

    def _start(self, x: torch.Tensor, params: AttackParams, call: Call) -> torch.Tensor:
        """The first iterate: x itself, or a uniform draw from the eps ball (L-inf) / a random
        direction at a uniform radius (L2, as torchattacks), projected into the bounds."""
        x_adv = torch.empty_like(x)
        if not self.random_start:
            return x_adv.copy_(x)
        shape, gen, dev = x.shape, call.generator, x.device
        eps = per_sample(params.eps, x)
        if self.norm == "linf":
            noise = (torch.rand(shape, generator=gen, device=dev) * 2 - 1) * eps
        else:
            direction = torch.randn(shape, generator=gen, device=dev)
            norms = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
            radius = torch.rand(shape[0], generator=gen, device=dev)
            noise = direction * per_sample(radius / norms, x) * eps
        x_adv.copy_(x.float() + noise)
        return self._project(x_adv, x, params)

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor, params: AttackParams) -> torch.Tensor:
        """x_adv, in place, in the eps ball around x and in the bounds."""
        project = ops.linf_project if self.norm == "linf" else ops.l2_project
        return project(x_adv, x, params.eps, params.lower, params.upper, out=x_adv, backend=self.backend)

    def _step(
        self, x_adv: torch.Tensor, direction: torch.Tensor, x: torch.Tensor, params: AttackParams
    ) -> torch.Tensor:
        step = ops.linf_step if self.norm == "linf" else ops.l2_step
        eps, alpha, lower, upper = params
        return step(
            x_adv, direction, x, eps, alpha, lower, upper, targeted=self.targeted, out=x_adv, backend=self.backend
        )

    # --- hooks for subclasses (momentum) -------------------------------------------------------

    def _init_state(self, x_adv: torch.Tensor) -> torch.Tensor | None:
        """State carried between steps: a tensor with one entry per sample in dim 0, or None."""
        return None

    def _direction(self, grad: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        return grad
