"""The root of every attack, :class:`Attack` (torchattacks' root class has the same name): the
options, which of them an attack supports, the model's safety, the checks of images and labels,
bounds, normalization, autocast and layout.

Its users: `gradient.py`'s :class:`GradientAttack` (the loop of FGSM, PGD, PGDL2, MIFGSM, APGD
and APGDT); CW, DeepFool, JSMA, FAB and Square, which run their own loops on this root;
`autoattack.py`, which builds its stages on it, reads the model through a stage's `predict`,
`logits` and `input_gradient` (its sanity checks) and says an option one refuses
(`UnsupportedOption`, `GRADIENT_OPTIONS`); `catalog.py`, whose AutoAttack stages take the shared
`OPTIONS` from the caller; and outside `fastadv.attacks`, the public `fastadv.Attack` (the demo's
registry types its attacks with it).

Contract (docs/DESIGN.md, "The attack contract"): input-only gradients, the model in attack
mode and restored on exit (also when the attack raises), the caller's tensors never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import checks as check
from .. import ops
from ..defenses.context import adaptive_gradients
from ..op_checks import to_step_param
from ._losses import is_success, per_sample_loss
from .model_mode import MODEL_MODES, attack_mode, callable_model, conv_weights
from .params import AttackParams, per_sample
from .progress import NO_TICKER, ProgressHook, Ticker
from .result import AttackResult, Best, confidence_of, finite_rows

# The options every attack takes unless it says otherwise (keyword-only; see `Attack`), and
# those of the gradient attacks (see `GradientAttack`); the defaults are in the signatures.
OPTIONS = ("targeted", "early_stop", "lower", "upper", "mean", "std", "amp", "channels_last", "backend", "generator",
           "model_mode", "adaptive")  # fmt: skip
GRADIENT_OPTIONS = OPTIONS + ("restarts", "loss", "early_stop_every", "cuda_graph", "eot_samples")
MODEL_IGNORES_IMAGES = "model: its output does not depend on the images through autograd (no gradient)"


def options_without(*names: str) -> tuple[str, ...]:
    """`OPTIONS` less `names`: the options of an attack that does not take those."""
    return tuple(o for o in OPTIONS if o not in names)


class UnsupportedOption(TypeError, ValueError):
    """A keyword argument the attack does not take: neither one of its own arguments nor one of
    its `supported_options`. A TypeError, as Python raises for an unexpected keyword argument,
    and a ValueError, as torchattacks raises for a mode an attack does not support. `option`:
    the keyword; `attack`: the class that refused it (None when not known)."""

    def __init__(self, message: str, option: str | None = None, attack: type | None = None):
        super().__init__(message)
        self.option, self.attack = option, attack


def _unsupported(name: str, attack: type[Attack]) -> UnsupportedOption:
    reason = attack.unsupported_because.get(name)
    return UnsupportedOption(
        f"{name}: {attack.__name__} does not take this option{f' ({reason})' if reason else ''}; "
        f"its options are {', '.join(attack.supported_options)}",
        name,
        attack,
    )


@dataclass
class Call:
    """What one call of an attack needs besides the images: its parameters on the images'
    device, mean and std as [1, C, 1, ...] views (or None), the layout that compacted batches
    keep, the random generator, and the labels' range (checked against the model's classes at
    the first forward pass)."""

    params: AttackParams
    mean: torch.Tensor | None
    std: torch.Tensor | None
    memory_format: torch.memory_format
    generator: torch.Generator | None
    label_range: tuple[int, int]
    channels_last: bool = False  # the model's convolution weights in channels_last too (attack_mode)
    classes_checked: bool = False
    capturing: bool = False  # inside CUDA-graph capture: autocast must not cache casts

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """`t` (images' shape) in the layout the attack started in."""
        return t.contiguous(memory_format=self.memory_format)


class Attack:
    """What every attack shares: the options below, the model's safety, the checks of images and
    labels, bounds, normalization, autocast and layout. A subclass implements `_run`.

    Options (keyword only; see :class:`fastadv.PGD` for each): targeted, early_stop, lower,
    upper, mean, std, amp, channels_last, backend, generator, model_mode, adaptive (the model
    runs inside `fastadv.defenses.adaptive_gradients`: defences build BPDA's backward pass).

    progress_hook: None, or a callable that `run` calls with (done, total, unit) from inside the
    attack's loop (gradient steps over every run, Square's queries), at most every
    `fastadv.attacks.progress.INTERVAL` seconds and when the work is done; set it on the attack
    (AutoAttack sets it on its stages for its `on_stage_progress`).

    Supported options: a subclass lists the keyword options it takes in `supported_options` (in
    the spirit of torchattacks' ``supported_mode``) and may say in `unsupported_because` why it
    leaves one out. Any other keyword that is not one of its constructor's own arguments raises
    :class:`UnsupportedOption` naming the option and the attack, whatever its value.
    """

    norm = "linf"
    loss = "ce"
    # Attacks without a budget (CW, DeepFool, JSMA) keep these: the ops are then not called with them.
    eps: float | torch.Tensor = 0.0
    alpha: float | torch.Tensor = 0.0
    supported_options: tuple[str, ...] = OPTIONS
    unsupported_because: dict[str, str] = {}
    _shown: tuple[str, ...] = ("targeted", "amp")
    progress_hook: ProgressHook | None = None
    _ticker: Ticker = NO_TICKER  # the running call's progress (see progress.py)

    def __new__(cls, *args: Any, **kwargs: Any) -> Attack:
        # Checked here, before any constructor of the chain runs: a subclass may pass its parent
        # a fixed value (FGSM's steps=1, APGD's random_start=True), and the caller's own value
        # must be refused by name rather than collide with it.
        for name in kwargs:
            if name not in _own_arguments(cls.__init__) and name not in cls.supported_options:
                raise _unsupported(name, cls)
        return super().__new__(cls)

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
        channels_last: bool | str = False,
        backend: str = "auto",
        generator: torch.Generator | None = None,
        model_mode: str = "eval",
        adaptive: bool = False,
    ):
        model = callable_model(model)  # a torch.export program: its module
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
        self.channels_last = _channels_last_option(channels_last)
        self.backend = ops.check_backend_name(backend)
        self.generator = check.generator(generator)
        self.model_mode = check.choice("model_mode", model_mode, MODEL_MODES)
        self.adaptive = check.flag("adaptive", adaptive)

    @property
    def supported_mode(self) -> list[str]:
        """torchattacks' name for what the attack supports: ["default"], plus "targeted" when it
        takes ``targeted=True``."""
        return ["default", "targeted"] if "targeted" in self.supported_options else ["default"]

    def settings(self) -> dict[str, Any]:
        """The settings the attack runs with, by name (those its repr shows: budget, step,
        steps, restarts, loss, random start, queries, ...): what a report records of it."""
        return {k: getattr(self, k) for k in self._shown}

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
        model are left as they were, also when this raises.

        The images are given to the model in their own dtype (never cast): float16 or bfloat16
        images need a model of that dtype (else ValueError naming the images); a float32 model
        runs in half precision on float32 images with ``amp=``. ValueError also when the
        model's outputs at the first forward pass are not finite (NaN or infinity)."""
        return self._attack(images, labels, track=True)

    def predict(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The model's classes for `images` (int64 [B]) as the attack sees them: the same
        mean/std, autocast, layout and model mode, the model left as it was. `labels`, when
        given, are checked as `run` checks them (shape, and range against the model's classes)."""
        if labels is None:
            labels = torch.zeros(images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else 0,
                                 dtype=torch.int64, device=getattr(images, "device", None))  # fmt: skip
        check.images_and_labels(images, labels)
        with torch.inference_mode(False), torch.no_grad():
            x, _, call = self._prepare(images, labels)
            if x.shape[0] == 0:
                return labels
            with attack_mode(self.model, self.model_mode, call.channels_last):
                return self._logits(x, call).argmax(1)

    def logits(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The model's outputs, float32 logits [B, K], for `images` as the attack's steps see
        them: the same mean/std, autocast, layout and model mode, without gradients; the model
        left as it was. `labels`, when given, are checked as `run` checks them. (AutoAttack's
        sanity checks read the model through this.)"""
        with self._as_seen(images, labels) as (x, _, call), torch.no_grad():
            return self._logits(x, call).float()

    def input_gradient(self, images: torch.Tensor, labels: torch.Tensor, loss: str = "ce") -> torch.Tensor | None:
        """d (the summed per-sample `loss` of the model's logits at `labels`) / d images, taken as
        the attack's steps take it (mean/std, autocast, layout, model mode; input only, the model
        left as it was): a tensor of the images' shape, or None when the outputs do not depend on
        the images through autograd. loss: "ce", "margin" or "dlr", as the attacks' `loss`."""
        with self._as_seen(images, labels) as (x, y, call):
            x = x.clone().requires_grad_(True)
            total = per_sample_loss(loss, self._logits(x, call), y).sum()
            return torch.autograd.grad(total, x, allow_unused=True)[0] if total.requires_grad else None

    @contextlib.contextmanager
    def _as_seen(self, images: torch.Tensor, labels: torch.Tensor | None):
        """(x, y, call) prepared as `run` prepares them, gradients on, the model in attack mode."""
        if labels is None:
            labels = torch.zeros(images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else 0,
                                 dtype=torch.int64, device=getattr(images, "device", None))  # fmt: skip
        check.images_and_labels(images, labels)
        with torch.inference_mode(False), torch.enable_grad():
            x, y, call = self._prepare(images, labels)
            with attack_mode(self.model, self.model_mode, call.channels_last):
                yield x, y, call

    def _attack(self, images: torch.Tensor, labels: torch.Tensor, track: bool) -> AttackResult:
        check.images_and_labels(images, labels)
        # Gradients are needed even when the caller is under no_grad or inference_mode.
        with torch.inference_mode(False), torch.enable_grad():
            x, y, call = self._prepare(images, labels)
            if x.shape[0] == 0:
                return Best(x, self.targeted).result()
            with attack_mode(self.model, self.model_mode, call.channels_last):
                return self._finite_only(self._run(x, y, call, track), x, y, call)

    def _finite_only(self, result: AttackResult, x: torch.Tensor, y: torch.Tensor, call: Call) -> AttackResult:
        """`result` with every non-finite candidate replaced by the clean image, which then does
        not fool the model (a NaN image would be "fooled" into some class). Samples for which
        no candidate was kept (predicted -1) get the model's class of the clean image and a NaN
        loss. Only the images are checked when nothing else is tracked (no host sync)."""
        finite = finite_rows(result.adv)
        adv = torch.where(per_sample(finite, x), result.adv, x)
        if result.success is None:
            return dataclasses.replace(result, adv=adv)
        non_finite = ~finite if result.non_finite is None else result.non_finite | ~finite
        redo = ~finite | (result.predicted < 0) if result.predicted is not None else ~finite
        success, predicted, loss = result.success & finite, result.predicted, result.loss
        confidence = result.confidence
        if bool(redo.any()):  # one host sync; rare: the clean class of the replaced samples
            with torch.no_grad():
                logits = self._logits(x[redo], call)
            clean = logits.argmax(1)
            predicted = torch.full_like(y, -1) if predicted is None else predicted.clone()
            predicted[redo] = clean
            if confidence is not None:
                confidence = confidence.clone()
                confidence[redo] = confidence_of(logits, clean)
            loss = loss.masked_fill(redo, float("nan"))
            success = success & ~redo
        return dataclasses.replace(result, adv=adv, success=success, loss=loss, predicted=predicted,
                                   non_finite=non_finite, confidence=confidence)  # fmt: skip

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        """The attack on prepared inputs (detached, dense, checked), the model in attack mode.
        track=False: only ``.adv`` of the result is used (``attack(images, labels)``)."""
        raise NotImplementedError

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (float32 [b]), ascended (untargeted) or descended (targeted)."""
        return per_sample_loss(self.loss, logits, y)

    def _success(self, predicted: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """bool [b] from the model's classes (logits.argmax(1))."""
        return is_success(predicted, y, self.targeted)

    @staticmethod
    def _input_grad(total: torch.Tensor, wrt: torch.Tensor, retain_graph: bool = False,
                    unused_ok: bool = False) -> torch.Tensor | None:  # fmt: skip
        """d total / d wrt (zeros where the model ignores part of the input). When `total` does
        not depend on `wrt` at all, the model error is raised, also for a plain callable whose
        own parameters still require grad (so `total` has a graph); with `unused_ok`, None is
        returned instead (DeepFool: one candidate class may be constant)."""
        require_grad(total)
        (grad,) = torch.autograd.grad(total, wrt, allow_unused=True, retain_graph=retain_graph)
        if grad is None and not unused_ok:
            raise ValueError(MODEL_IGNORES_IMAGES)
        return grad

    def _logits(self, x_adv: torch.Tensor, call: Call) -> torch.Tensor:
        inputs = x_adv if call.mean is None else (x_adv - call.mean) / call.std
        autocast = (
            torch.autocast(x_adv.device.type, dtype=self.amp, cache_enabled=not call.capturing)
            if self.amp is not None
            else contextlib.nullcontext()
        )
        with autocast, adaptive_gradients(self.adaptive):
            try:
                output = self.model(inputs)
            except RuntimeError as error:
                _explain_dtype_mismatch(self.model, inputs, self.amp, error)
                raise
            logits = check.logits(output, x_adv.shape[0])
        if not call.classes_checked:  # once per call, at the first forward
            if not call.capturing:  # (its images are finite: a non-finite output is the model's)
                check.finite_outputs(logits, "images at the attack's first forward pass")
            low, high = call.label_range
            if low < 0 or high >= logits.shape[1]:
                raise ValueError(
                    f"labels must lie in [0, {logits.shape[1]}) for a model with {logits.shape[1]} outputs; "
                    f"found {low}..{high}"
                )
            call.classes_checked = True
        return logits

    # --- set-up -------------------------------------------------------------------------------

    def _prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Call]:
        device = images.device
        if self.generator is not None and self.generator.device.type != device.type:
            raise ValueError(f"generator must be on images' device type {device.type}, got {self.generator.device}")
        if self.channels_last is True and images.dim() != 4:
            raise ValueError(f"channels_last needs 4-d images [B, C, H, W], got shape {tuple(images.shape)}")
        x = images.detach()
        if x.is_inference():
            x = x.clone()
        # "auto" (AutoAttack's default): as True on a CPU when the model has convolutions
        channels_last = self.channels_last is True or (
            self.channels_last == "auto" and images.dim() == 4 and device.type == "cpu"
            and bool(conv_weights(self.model))
        )  # fmt: skip
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        elif not _dense(x):
            x = x.contiguous()
        # Compacted batches keep the layout the attack started in.
        fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        params = AttackParams(*(_flat_per_sample(p, x) for p in (self.eps, self.alpha, self.lower, self.upper))).to(
            device
        )
        for name, p in zip(AttackParams._fields, params, strict=True):
            if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] not in (1, x.shape[0]):
                raise ValueError(
                    f"{name} must be a number, a 0-d tensor, or have 1 or B = {x.shape[0]} entries in dim 0; "
                    f"got shape {tuple(p.shape)}"
                )
            if isinstance(p, torch.Tensor) and p.dim() >= 1:  # the ops' shapes, checked before any step
                to_step_param(
                    name, p, x, per_channel=self.norm == "linf" or name in ("lower", "upper"), nonnegative=False
                )
        mean = std = None
        if self.mean is not None:
            channels = images.shape[1]
            if max(self.mean.numel(), self.std.numel()) not in (1, channels):
                raise ValueError(f"mean and std must have 1 or C = {channels} values, got {self.mean.numel()}")
            view = (1, -1) + (1,) * (images.dim() - 2)
            mean = self.mean.to(device, images.dtype).view(view)
            std = self.std.to(device, images.dtype).view(view)
        _check_range(x, params)
        y = labels.detach().long()
        if y.is_inference():
            y = y.clone()
        label_range = tuple(int(v) for v in torch.aminmax(y)) if y.numel() else (0, 0)
        return x, y, Call(params, mean, std, fmt, self.generator, label_range, channels_last)


def _channels_last_option(value: object) -> bool | str:
    if isinstance(value, str) and value == "auto":
        return value
    if not isinstance(value, bool):
        raise TypeError(f"channels_last must be True, False or 'auto', got {value!r}")
    return value


def _explain_dtype_mismatch(model: Any, inputs: torch.Tensor, amp: torch.dtype | None, error: RuntimeError) -> None:
    """Raises a ValueError naming the images when the model failed on images of another
    floating dtype than its parameters (torch's own message names neither the argument nor
    the fix; fastadv does not cast the caller's images behind their back)."""
    if amp is not None or not isinstance(model, torch.nn.Module):
        return
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is None or dtype == inputs.dtype:
        return
    raise ValueError(
        f"images: {str(inputs.dtype).removeprefix('torch.')} images for a model whose parameters are "
        f"{str(dtype).removeprefix('torch.')}; give images of the model's dtype (images.to({dtype})), or "
        f"float32 images with amp=torch.float16 / torch.bfloat16 to run a float32 model in half precision"
    ) from error


def require_grad(output: torch.Tensor) -> None:
    """Raises the model error when `output` does not depend on the images through autograd."""
    if not output.requires_grad:
        raise ValueError(MODEL_IGNORES_IMAGES)


@functools.cache
def _own_arguments(init: Callable[..., None]) -> frozenset[str]:
    """The names a constructor takes as keyword arguments of its own (not through **options)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in inspect.signature(init).parameters.values() if p.kind in kinds)


def _flat_per_sample(p: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A per-sample tensor written with fewer dims than the images ([B, 1] for [B, C, H, W])
    as [B]; the ops take [B] or [B, 1, ..., 1] with the images' dims."""
    if isinstance(p, torch.Tensor) and 2 <= p.dim() < x.dim() and all(s == 1 for s in p.shape[1:]):
        return p.reshape(p.shape[0])
    return p


def _check_range(x: torch.Tensor, params: AttackParams) -> None:
    lower, upper = per_sample(params.lower, x), per_sample(params.upper, x)
    try:
        inside = (x >= lower) & (x <= upper)
    except RuntimeError:
        raise ValueError(f"lower and upper must broadcast against images {tuple(x.shape)}") from None
    if x.numel() and not bool(inside.all()):
        raise ValueError(
            f"images must lie in [lower, upper] (no NaN); found values from {x.min().item()} to {x.max().item()}"
        )


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return repr(value)
