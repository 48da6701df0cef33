"""The engine every gradient attack runs on: one loop for FGSM, PGD, PGD-L2 and MI-FGSM.

Contract (DESIGN.md, "The attack engine contract"): input-only gradients of the summed loss,
the model in eval mode and restored on exit, restarts keeping the best result per sample, early
stopping that compacts the batch. Every step goes through the fused ops in `fastadv.ops`.

A subclass picks the norm and may transform the gradient before the step (MI-FGSM's momentum)
through `_init_state`, `_direction` and `_select_state`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .. import _validate as check
from .. import ops
from ._cuda_graph import GraphedSteps, graph_key
from ._losses import LOSSES, is_success, per_sample_loss
from ._model_state import MODEL_MODES, attack_mode
from .result import AttackResult, _Best

# Graphs kept per attack (one per input shape): each holds a private memory pool.
_MAX_GRAPHS = 4


class _Params(NamedTuple):
    eps: float | torch.Tensor
    alpha: float | torch.Tensor
    lower: float | torch.Tensor
    upper: float | torch.Tensor

    def to(self, device: torch.device) -> _Params:
        return _Params(*(p.to(device) if isinstance(p, torch.Tensor) else p for p in self))

    def select(self, positions: torch.Tensor, batch: int) -> _Params:
        """The parameters of the samples at `positions` (per-sample tensors are indexed)."""
        return _Params(*(_select_param(p, positions, batch) for p in self))


def _select_param(p: float | torch.Tensor, positions: torch.Tensor, batch: int) -> float | torch.Tensor:
    if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] == batch and batch > 1:
        return p.index_select(0, positions)
    return p


def _per_element(p: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """p broadcastable against x: a per-sample [B] tensor becomes [B, 1, ..., 1]."""
    if isinstance(p, torch.Tensor) and p.dim() == 1:
        return p.view(-1, *([1] * (x.dim() - 1)))
    return p


@dataclass
class _Call:
    """What one call of the attack needs besides the images."""

    params: _Params
    mean: torch.Tensor | None
    std: torch.Tensor | None
    memory_format: torch.memory_format
    generator: torch.Generator | None
    label_range: tuple[int, int]
    classes_checked: bool = False
    capturing: bool = False  # inside CUDA-graph capture: autocast must not cache casts


class AttackBase:
    """What every attack shares: the options below, the model's safety, the checks of images and
    labels, bounds, normalization, autocast and layout. A subclass implements `_run`.

    Options (keyword only): targeted, early_stop, lower, upper, mean, std, amp, channels_last,
    backend, generator, model_mode (see :class:`fastadv.PGD`).
    """

    norm = "linf"
    loss = "ce"
    # Attacks without a budget (CW, DeepFool, JSMA) keep these: the ops are then not called with them.
    eps: float | torch.Tensor = 0.0
    alpha: float | torch.Tensor = 0.0
    _shown: tuple[str, ...] = ("targeted", "amp")

    def __init__(
        self,
        model: Any,
        *,
        targeted: bool = False,
        early_stop: bool = False,
        lower: float | torch.Tensor = 0.0,
        upper: float | torch.Tensor = 1.0,
        mean: Any = None,
        std: Any = None,
        amp: Any = None,
        channels_last: bool = False,
        backend: str = "auto",
        generator: torch.Generator | None = None,
        model_mode: str = "eval",
    ):
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        self.model = model
        self.targeted = check.flag("targeted", targeted)
        self.early_stop = check.flag("early_stop", early_stop)
        self.lower = check.parameter("lower", lower, nonnegative=False)
        self.upper = check.parameter("upper", upper, nonnegative=False)
        if isinstance(self.lower, float) and isinstance(self.upper, float) and self.lower > self.upper:
            raise ValueError(f"lower must be <= upper, got lower={self.lower} and upper={self.upper}")
        self.mean, self.std = check.normalization(mean, std)
        self.amp = check.amp_dtype(amp)
        self.channels_last = check.flag("channels_last", channels_last)
        self.backend = ops.check_backend_name(backend)
        self.generator = check.generator(generator)
        self.model_mode = check.choice("model_mode", model_mode, MODEL_MODES)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(getattr(self, k))}" for k in self._shown)
        return f"{type(self).__name__}({args})"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.forward(images, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The adversarial images: ``run(images, labels).adv``."""
        return self.run(images, labels).adv

    def run(self, images: torch.Tensor, labels: torch.Tensor) -> AttackResult:
        """Attacks a batch: images [B, ...] in [lower, upper], labels [B] class indices (the
        targets when targeted). Returns an :class:`AttackResult`; the caller's tensors and
        model are left as they were, also when this raises."""
        return self._attack(images, labels, track=True)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The model's classes for `images` (int64 [B]) as the attack sees them: the same
        mean/std, autocast, layout and model mode, the model left as it was."""
        labels = torch.zeros(images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else 0,
                             dtype=torch.int64, device=getattr(images, "device", None))  # fmt: skip
        check.images_and_labels(images, labels)
        with torch.inference_mode(False), torch.no_grad():
            x, _, call = self._prepare(images, labels)
            if x.shape[0] == 0:
                return labels
            with attack_mode(self.model, self.model_mode):
                return self._logits(x, call).argmax(1)

    def _attack(self, images: torch.Tensor, labels: torch.Tensor, track: bool) -> AttackResult:
        check.images_and_labels(images, labels)
        # Gradients are needed even when the caller is under no_grad or inference_mode.
        with torch.inference_mode(False), torch.enable_grad():
            x, y, call = self._prepare(images, labels)
            if x.shape[0] == 0:
                return _Best(x, self.targeted).result()
            with attack_mode(self.model, self.model_mode):
                return self._run(x, y, call, track)

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: _Call, track: bool) -> AttackResult:
        """The attack on prepared inputs (detached, dense, checked), the model in attack mode."""
        raise NotImplementedError

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (float32 [b]), ascended (untargeted) or descended (targeted)."""
        return per_sample_loss(self.loss, logits, y)

    def _success(self, predicted: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """bool [b] from the model's classes (logits.argmax(1))."""
        return is_success(predicted, y, self.targeted)

    @staticmethod
    def _input_grad(total: torch.Tensor, wrt: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """d total / d wrt (zeros where the model ignores part of the input)."""
        _require_grad(total)
        (grad,) = torch.autograd.grad(total, wrt, allow_unused=True, retain_graph=retain_graph)
        return torch.zeros_like(wrt) if grad is None else grad

    def _logits(self, x_adv: torch.Tensor, call: _Call) -> torch.Tensor:
        inputs = x_adv if call.mean is None else (x_adv - call.mean) / call.std
        autocast = (
            torch.autocast(x_adv.device.type, dtype=self.amp, cache_enabled=not call.capturing)
            if self.amp is not None
            else contextlib.nullcontext()
        )
        with autocast:
            logits = check.logits(self.model(inputs), x_adv.shape[0])
        if not call.classes_checked:  # once per call, at the first forward
            low, high = call.label_range
            if low < 0 or high >= logits.shape[1]:
                raise ValueError(
                    f"labels must lie in [0, {logits.shape[1]}) for a model with {logits.shape[1]} outputs; "
                    f"found {low}..{high}"
                )
            call.classes_checked = True
        return logits

    # --- set-up -------------------------------------------------------------------------------

    def _prepare(self, images: torch.Tensor, labels: torch.Tensor):
        device = images.device
        if self.generator is not None and self.generator.device.type != device.type:
            raise ValueError(f"generator must be on images' device type {device.type}, got {self.generator.device}")
        if self.channels_last and images.dim() != 4:
            raise ValueError(f"channels_last needs 4-d images [B, C, H, W], got shape {tuple(images.shape)}")
        x = images.detach()
        if x.is_inference():
            x = x.clone()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        elif not _dense(x):
            x = x.contiguous()
        # Compacted batches keep the layout the attack started in.
        fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        params = _Params(self.eps, self.alpha, self.lower, self.upper).to(device)
        for name, p in zip(_Params._fields, params, strict=True):
            if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] not in (1, x.shape[0]):
                raise ValueError(
                    f"{name} must be a number, a 0-d tensor, or have 1 or B = {x.shape[0]} entries in dim 0; "
                    f"got shape {tuple(p.shape)}"
                )
        mean = std = None
        if self.mean is not None:
            channels = images.shape[1]
            if max(self.mean.numel(), self.std.numel()) not in (1, channels):
                raise ValueError(f"mean and std must have 1 or C = {channels} values, got {self.mean.numel()}")
            view = (1, -1) + (1,) * (images.dim() - 2)
            mean = self.mean.to(device, images.dtype).view(view)
            std = self.std.to(device, images.dtype).view(view)
        self._check_range(x, params)
        y = labels.detach().long()
        if y.is_inference():
            y = y.clone()
        label_range = tuple(int(v) for v in torch.aminmax(y)) if y.numel() else (0, 0)
        return x, y, _Call(params, mean, std, fmt, self.generator, label_range)

    @staticmethod
    def _check_range(x: torch.Tensor, params: _Params) -> None:
        lower, upper = _per_element(params.lower, x), _per_element(params.upper, x)
        try:
            inside = (x >= lower) & (x <= upper)
        except RuntimeError:
            raise ValueError(f"lower and upper must broadcast against images {tuple(x.shape)}") from None
        if x.numel() and not bool(inside.all()):
            raise ValueError(
                f"images must lie in [lower, upper] (no NaN); found values from {x.min().item()} to {x.max().item()}"
            )

    @staticmethod
    def _layout(t: torch.Tensor, call: _Call) -> torch.Tensor:
        return t.contiguous(memory_format=call.memory_format)


class Attack(AttackBase):
    """Base class of the gradient attacks (see FGSM, PGD, PGDL2, MIFGSM for the arguments).

    Call ``attack(images, labels)`` for the adversarial images, or ``attack.run(images, labels)``
    for an :class:`AttackResult` with per-sample success, loss and steps used.
    """

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
        **options: Any,
    ):
        super().__init__(model, **options)
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

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: _Call, track: bool) -> AttackResult:
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
        best = _Best(x, self.targeted)
        idx = None
        for _ in range(self.restarts):
            self._one_run(x, y, idx, best, call)
            idx = (~best.success).nonzero().squeeze(1)  # restarts attack the survivors only
            if idx.numel() == 0:
                break
        return best.result()

    # --- the loop -------------------------------------------------------------------------

    def _graphed_steps(self, x, y, call: _Call) -> torch.Tensor | None:
        """The final iterate through a CUDA graph of the step (captured at the first call with
        this shape, replayed after), or None with the reason in `graph_status` when the step
        cannot be captured: then the caller runs it uncaptured."""
        reason = None
        if type(self)._direction is not Attack._direction:
            reason = f"{type(self).__name__}'s step carries state between steps"
        elif x.device.type != "cuda":
            reason = f"images are on {x.device.type}, CUDA graphs need a GPU"
        key = graph_key(x, y, call.params)
        if reason is None and key not in self._graphs:
            if len(self._graphs) >= _MAX_GRAPHS:  # each graph holds its own memory pool
                self._graphs.pop(next(iter(self._graphs)))
            try:
                self._graphs[key] = GraphedSteps(self, x, y, call)
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

    def _steps_only(self, x, y, call: _Call) -> AttackResult:
        x_adv = self._start(x, call.params, call)
        state = self._init_state(x_adv)
        for _ in range(self.steps):
            _, _, grad = self._loss_and_grad(x_adv, y, call)
            x_adv = self._step(x_adv, self._direction(grad, state), x, call.params)
        return AttackResult(x_adv, None, None, None)  # type: ignore[arg-type]

    def _one_run(self, x, y, idx, best: _Best, call: _Call) -> None:
        batch = x.shape[0]
        params = call.params if idx is None else call.params.select(idx, batch)
        if idx is not None:
            x, y = self._layout(x.index_select(0, idx), call), y.index_select(0, idx)
        x_adv = self._start(x, params, call)
        state = self._init_state(x_adv)
        for step in range(self.steps):
            logits, loss, grad = self._loss_and_grad(x_adv, y, call)
            predicted = logits.argmax(1)
            success = self._success(predicted, y)
            best.add(idx, x_adv, predicted, success, loss, final=False)
            best.count_step(idx)
            if self.early_stop and (step + 1) % self.early_stop_every:
                # between compactions fooled samples stay where they are, without a host sync
                direction = self._direction(grad, state).masked_fill(_rows(success, grad), 0)
                x_adv = self._step(x_adv, direction, x, params)
                continue
            if self.early_stop:
                remaining = int((~success).sum())  # compaction needs the new batch size: one sync
                if remaining == 0:
                    return
                if remaining < x.shape[0]:
                    keep = (~success).nonzero().squeeze(1)
                    n = x.shape[0]
                    idx = keep if idx is None else idx.index_select(0, keep)
                    x, x_adv, grad = (self._layout(t.index_select(0, keep), call) for t in (x, x_adv, grad))
                    y = y.index_select(0, keep)
                    params = params.select(keep, n)
                    state = self._select_state(state, keep)
            x_adv = self._step(x_adv, self._direction(grad, state), x, params)
        with torch.no_grad():
            logits = self._logits(x_adv, call)
            loss = self._loss(logits, y)
        predicted = logits.argmax(1)
        best.add(idx, x_adv, predicted, self._success(predicted, y), loss, final=True)

    def _loss_and_grad(self, x_adv: torch.Tensor, y: torch.Tensor, call: _Call, loss_fn=None):
        """(logits, per-sample loss, gradient of the summed loss with respect to x_adv);
        `loss_fn(logits)` replaces the attack's loss of y (APGD-T's targeted DLR)."""
        x_adv.requires_grad_(True)
        try:
            logits = self._logits(x_adv, call)
            loss = self._loss(logits, y) if loss_fn is None else loss_fn(logits)
            # Summed, not averaged: a sample's gradient does not depend on the batch size.
            grad = self._input_grad(loss.sum(), x_adv)
        finally:
            x_adv.requires_grad_(False)
        return logits.detach(), loss.detach(), grad

    def _start(self, x: torch.Tensor, params: _Params, call: _Call) -> torch.Tensor:
        """The first iterate: x itself, or a uniform draw from the eps ball (L-inf) / a random
        direction at a uniform radius (L2, as torchattacks), projected into the bounds."""
        x_adv = torch.empty_like(x)
        if not self.random_start:
            return x_adv.copy_(x)
        shape, gen, dev = x.shape, call.generator, x.device
        eps = _per_element(params.eps, x)
        if self.norm == "linf":
            noise = (torch.rand(shape, generator=gen, device=dev) * 2 - 1) * eps
        else:
            direction = torch.randn(shape, generator=gen, device=dev)
            norms = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
            radius = torch.rand(shape[0], generator=gen, device=dev)
            noise = direction * (radius / norms).view(-1, *([1] * (x.dim() - 1))) * eps
        x_adv.copy_(x.float() + noise)
        project = ops.linf_project if self.norm == "linf" else ops.l2_project
        return project(x_adv, x, params.eps, params.lower, params.upper, out=x_adv, backend=self.backend)

    def _step(self, x_adv: torch.Tensor, direction: torch.Tensor, x: torch.Tensor, params: _Params) -> torch.Tensor:
        step = ops.linf_step if self.norm == "linf" else ops.l2_step
        eps, alpha, lower, upper = params
        return step(
            x_adv, direction, x, eps, alpha, lower, upper, targeted=self.targeted, out=x_adv, backend=self.backend
        )

    # --- hooks for subclasses (momentum) -------------------------------------------------------

    def _init_state(self, x_adv: torch.Tensor) -> Any:
        return None

    def _direction(self, grad: torch.Tensor, state: Any) -> torch.Tensor:
        return grad

    def _select_state(self, state: Any, keep: torch.Tensor) -> Any:
        return state


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample bool [b] viewed to broadcast against `like` [b, ...]."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _require_grad(output: torch.Tensor) -> None:
    if not output.requires_grad:
        raise ValueError("model: its output does not depend on the images through autograd (no gradient)")


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return repr(value)
