"""Auto-PGD (Croce and Hein 2020): APGD with the CE or DLR loss, and APGD-T (targeted DLR)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import _validate as check
from .. import ops
from ._losses import targeted_dlr
from .base import OPTIONS, Call, options_without
from .gradient import GradientAttack, RunState
from .params import per_sample
from .result import Best

_SCHEDULE = "APGD's step-size schedule needs every step's loss"
_NORMS = {"Linf": "linf", "linf": "linf", "L2": "l2", "l2": "l2"}


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step size: w_j = ceil(p_j * steps), p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(q * steps - 1e-9) for q in p[1:]}  # (the tolerance absorbs 0.57 * 100 = 57.000000001)
    return sorted(m for m in marks if 1 <= m <= steps)


class APGD(GradientAttack):
    r"""Auto-PGD: "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", Croce and Hein, ICML 2020, https://arxiv.org/abs/2003.01690.

    Distance: L-inf or L2. PGD with momentum 0.75 and a step size that starts at 2 eps and halves
    at checkpoints (after 22%, 41%, 57%, ... of the steps) when the loss rose in fewer than
    ``rho`` of the steps since the last one, or when it stalled without a halving; then the run
    restarts from its best point. Steps and projections are the fused ops. Returns, per sample,
    the latest iterate that fooled the model, else the point of highest loss.

    Arguments (defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        norm ("Linf" | "L2"): Default: "Linf".
        eps (float or tensor [B]): radius, in pixel units. Default: 8/255.
        steps (int): iterations (each one forward and backward pass, plus one at the start).
            Default: 10.
        n_restarts (int): runs from new random starts, on the samples not yet fooled. Default: 1.
        seed (int or None): seeds the random starts when no `generator` is given. Default: 0.
        loss ("ce" | "dlr" | "margin"): Default: "ce".
        eot_iter (int): gradients averaged per step (expectation over transformation, for models
            with randomness); each costs a forward and backward pass. Default: 1.
        rho (float): the share of rising steps below which the step size halves. Default: 0.75.
        **options: targeted, early_stop, lower, upper, mean, std, amp, channels_last, backend,
            generator, model_mode: as for :class:`fastadv.PGD`. Not early_stop_every or
            cuda_graph: the step-size schedule needs every step's loss.

    Shape, errors and model safety: as for :class:`fastadv.PGD`; ``attack(images, labels)`` and
    ``attack.run(images, labels).adv`` are the same images.

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

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float | torch.Tensor = 8 / 255,
        steps: int = 10,
        n_restarts: int = 1,
        seed: int | None = 0,
        loss: str = "ce",
        eot_iter: int = 1,
        rho: float = 0.75,
        **options: Any,
    ):
        if norm not in _NORMS:
            raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
        self.norm = _NORMS[norm]
        if not isinstance(rho, (int, float)) or not 0 < rho <= 1:
            raise ValueError(f"rho must lie in (0, 1], got {rho!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.rho, self.seed = float(rho), seed
        self.eot_iter = check.positive_int("eot_iter", eot_iter)
        super().__init__(model, eps=eps, alpha=0.0, steps=steps, random_start=True, restarts=n_restarts, loss=loss,
                         **options)  # fmt: skip

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.run(images, labels).adv

    def _prepare(self, images, labels):
        x, y, call = super()._prepare(images, labels)
        if call.generator is None and self.seed is not None:
            call.generator = torch.Generator(device=images.device).manual_seed(self.seed)
        return x, y, call

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
        x, y, idx, params = run.x, run.y, run.idx, run.params
        targets = self._run_targets(x, y, call, index)
        x_adv = self._start(x, params, call)
        s = {"x": x, "y": y, "x_adv": x_adv, "targets": targets}
        obj, s["grad"], s["predicted"], s["loss"] = self._evaluate(best, idx, s, call)
        eps = params.eps
        if isinstance(eps, torch.Tensor) and eps.numel() > 1:
            if eps.numel() != x.shape[0]:
                raise ValueError("eps: APGD takes a number or one eps per sample")
            eps = eps.reshape(-1).float()
        s["eta"] = torch.full((x.shape[0],), 2.0, device=x.device) * eps
        # the point of highest objective so far, with what was computed there (no forward at the end)
        s["x_best"], s["grad_best"], s["obj_best"] = x_adv.clone(), s["grad"].clone(), obj.clone()
        s["predicted_best"], s["loss_best"] = s["predicted"].clone(), s["loss"].clone()
        s["x_old"], s["obj_last_check"] = x_adv.clone(), obj.clone()
        s["reduced_last_check"] = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        s["rises"] = torch.zeros(x.shape[0], device=x.device)
        s["obj_prev"] = obj
        marks, last_mark = set(checkpoints(self.steps)), 0
        for i in range(1, self.steps + 1):
            # z = P(x_adv + eta sign(grad)) in one fused step; the first step takes z as it is (no
            # momentum, already projected), later ones x_adv + 0.75 (z - x_adv) + 0.25 (x_adv - x_old),
            # computed in place in z and projected again
            z = self._fused_step(s["x_adv"], s["grad"], s["x"], s["eta"], params)
            if i > 1:
                torch.lerp(s["x_adv"], z, 0.75, out=z)
                z.add_(s["x_adv"], alpha=0.25).sub_(s["x_old"], alpha=0.25)
                z = self._project(z, s["x"], params)
            s["x_old"], s["x_adv"] = s["x_adv"], z
            obj, s["grad"], s["predicted"], s["loss"] = self._evaluate(best, idx, s, call)
            s["rises"].add_(obj > s["obj_prev"])
            s["obj_prev"] = obj
            better = obj > s["obj_best"]
            rows = per_sample(better, x)
            torch.where(rows, s["x_adv"], s["x_best"], out=s["x_best"])
            torch.where(rows, s["grad"], s["grad_best"], out=s["grad_best"])
            torch.where(better, obj, s["obj_best"], out=s["obj_best"])
            torch.where(better, s["predicted"], s["predicted_best"], out=s["predicted_best"])
            torch.where(better, s["loss"], s["loss_best"], out=s["loss_best"])
            if i in marks:
                # Halve where the loss rose in fewer than rho of the steps since the last mark, or
                # stalled without a halving there; restart those samples from their best point.
                span = i - last_mark
                halve = (s["rises"] <= self.rho * span) | (
                    ~s["reduced_last_check"] & (s["obj_last_check"] >= s["obj_best"])
                )
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                s["x_adv"] = torch.where(per_sample(halve, x), s["x_best"], s["x_adv"])
                s["grad"] = torch.where(per_sample(halve, x), s["grad_best"], s["grad"])
                s["reduced_last_check"], s["obj_last_check"] = halve, s["obj_best"].clone()
                s["rises"].zero_()
                last_mark = i
            if self.early_stop and i < self.steps:
                success = self._success(s["predicted"], s["y"])
                remaining = int((~success).sum())  # one sync: compaction needs the new size
                if remaining == 0:
                    return
                if remaining < s["x"].shape[0]:
                    keep = (~success).nonzero().squeeze(1)
                    n = s["x"].shape[0]
                    idx = keep if idx is None else idx.index_select(0, keep)
                    params = params.select(keep, n)
                    s = {k: (None if v is None else v.index_select(0, keep)) for k, v in s.items()}
        # unfooled samples: the point of highest objective, with its class and loss as computed there
        success_best = self._success(s["predicted_best"], s["y"])
        best.add(idx, s["x_best"], s["predicted_best"], success_best, s["loss_best"], final=True)

    def _evaluate(self, best: Best, idx, s: dict, call: Call):
        """Forward and backward at s["x_adv"]; records the iterate in `best`. Returns the
        objective, its input gradient, the model's classes and the attack's loss of y."""
        y, targets = s["y"], s["targets"]

        def objective(logits):
            return self._objective(logits, y, targets)

        logits, obj, grad = self._loss_and_grad(s["x_adv"], y, call, loss_fn=objective)
        if self.eot_iter > 1:  # a randomized model: the mean of eot_iter gradients
            for _ in range(self.eot_iter - 1):
                grad += self._loss_and_grad(s["x_adv"], y, call, loss_fn=objective)[2]
            grad /= self.eot_iter
        predicted = logits.argmax(1)
        loss = self._recorded_loss(logits, y, obj)
        best.record_step(idx, s["x_adv"], predicted, self._success(predicted, y), loss)
        return obj, grad, predicted, loss

    def _fused_step(self, x_adv, grad, x, eta, params):
        step = ops.linf_step if self.norm == "linf" else ops.l2_step
        # the objective is already signed for targeted runs: always step up
        return step(x_adv, grad, x, params.eps, eta, params.lower, params.upper, backend=self.backend)


class APGDT(APGD):
    r"""APGD-T: APGD with the targeted DLR loss (Croce and Hein 2020), run towards each of the
    ``n_target_classes`` classes the model ranks highest after the true one, each run on the
    samples not yet fooled. Labels are the true classes (an untargeted attack: success means a
    wrong prediction).

    Arguments: as :class:`APGD` (``loss`` is the targeted DLR: only "dlr" is taken), plus
        n_target_classes (int): Default: 9 (AutoAttack's; at most K - 1).
        n_classes (int or None): torchattacks' way to say the same: n_target_classes = n_classes - 1.

    Example:
        >>> adv_images = fastadv.APGDT(model, eps=8/255, steps=100, n_target_classes=9)(images, labels)
    """

    supported_options = options_without("targeted")
    unsupported_because = {
        **APGD.unsupported_because,
        "targeted": "APGDT takes the true labels and picks its own targets",
    }

    def __init__(self, model: Any, norm: str = "Linf", eps: float | torch.Tensor = 8 / 255, steps: int = 10,
                 n_restarts: int = 1, seed: int | None = 0, loss: str = "dlr", eot_iter: int = 1, rho: float = 0.75,
                 *, n_target_classes: int = 9, n_classes: int | None = None, **options: Any):  # fmt: skip
        if loss != "dlr":
            raise ValueError(f"loss: APGDT ascends the targeted DLR loss only (loss='dlr'), got {loss!r}")
        if n_classes is not None:
            if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
                raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
            n_target_classes = n_classes - 1
        if not isinstance(n_target_classes, int) or isinstance(n_target_classes, bool) or n_target_classes < 1:
            raise ValueError(f"n_target_classes must be an int >= 1, got {n_target_classes!r}")
        self.n_target_classes = n_target_classes
        super().__init__(model, norm=norm, eps=eps, steps=steps, n_restarts=n_restarts, seed=seed, loss="dlr",
                         eot_iter=eot_iter, rho=rho, **options)  # fmt: skip
        # every target class gets `n_restarts` runs
        self.restarts = n_restarts * n_target_classes

    def _run_targets(self, x, y, call, index):
        with torch.no_grad():
            logits = self._logits(x, call)
        if logits.shape[1] < 4:
            raise ValueError(f"model: APGDT's targeted DLR needs at least 4 classes, got {logits.shape[1]}")
        # runs 0..n_restarts-1 aim at the best other class, the next n_restarts at the second, ...
        rank = (index // (self.restarts // self.n_target_classes)) % min(self.n_target_classes, logits.shape[1] - 1)
        others = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        return others.sort(dim=1, descending=True).indices[:, rank]

    def _objective(self, logits, y, targets):
        return targeted_dlr(logits, y, targets)

    def _recorded_loss(self, logits, y, objective):
        return self._loss(logits, y)  # the untargeted DLR of the true class
