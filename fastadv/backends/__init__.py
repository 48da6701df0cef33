"""Backend registry and choice. A backend is anything that fulfils `Backend` (below); each
built-in one lives in the module named after it: `torch` (torch_backend.py, the reference),
`triton` (triton_backend/), `cpu` (cpu_backend.py) and `cuda` (cuda_backend.py), the last two
over the C++ extension (extension.py). The tests register emulated CUDA backends. The public ops
(fastadv/ops.py) check the arguments, pick a backend here (`resolve_backend`) and call it."""

from __future__ import annotations

import os
from typing import Protocol

import torch

from . import torch_backend
from .cpu_backend import cpu
from .cuda_backend import cuda
from .step_param import StepParam

try:  # the one guarded import of Triton: triton_backend imports it at its top
    import triton  # noqa: F401
except ImportError as error:  # fastadv works without Triton; the backend says why it is missing
    _TRITON_MISSING = f"Triton is not installed ({error}); pip install triton"
else:
    _TRITON_MISSING = None
    from . import triton_backend


class Backend(Protocol):
    """What a backend provides. The `*_into` functions write into `out`, which has x_adv's shape
    and dtype; x_adv, grad, x and out arrive in one native layout (contiguous or channels_last,
    fastadv/op_checks.py's native_format), parameters as checked StepParams, everything on one device.
    docs/DESIGN.md ("The backend contract") says what each must compute."""

    def unavailable_reason(self, device: torch.device | None = None) -> str | None:
        """None when the backend can run tensors on `device` (any device when None), else why not."""

    def linf_step_into(
        self, x_adv, grad, x, eps: StepParam, alpha: StepParam, lower: StepParam, upper: StepParam, targeted, out
    ): ...

    def linf_project_into(self, x_adv, x, eps: StepParam, lower: StepParam, upper: StepParam, out): ...

    def l2_step_into(
        self, x_adv, grad, x, eps: StepParam, alpha: StepParam, lower: StepParam, upper: StepParam, targeted, out
    ): ...

    def l2_project_into(self, x_adv, x, eps: StepParam, lower: StepParam, upper: StepParam, out): ...


class MissingBackend:
    """A backend that cannot run here, saying why (`reason`) when asked or called."""

    def __init__(self, reason: str):
        self.reason = reason

    def unavailable_reason(self, device: torch.device | None = None) -> str | None:
        return self.reason

    def _refuse(self, *args, **kwargs):
        raise RuntimeError(self.reason)

    linf_step_into = linf_project_into = l2_step_into = l2_project_into = _refuse


_REQUIRED = ("unavailable_reason", "linf_step_into", "linf_project_into", "l2_step_into", "l2_project_into")

BACKENDS: dict[str, Backend] = {
    "torch": torch_backend,
    "triton": triton_backend if _TRITON_MISSING is None else MissingBackend(_TRITON_MISSING),
    "cpu": cpu,
    "cuda": cuda,
}

# Fastest first, per device type.
_AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}


def register_backend(name: str, backend: Backend) -> None:
    """Adds a backend under `name` (tests register emulated ones; see tests/cuda_emulation)."""
    missing = [attr for attr in _REQUIRED if not hasattr(backend, attr)]
    if missing:
        raise TypeError(f"backend {name!r} lacks {', '.join(missing)}")
    if name == "auto" or name in BACKENDS:
        raise ValueError(f"a backend named {name!r} exists already")
    BACKENDS[name] = backend


def available_backends() -> dict[str, str]:
    """{name: "ok" | why it is unavailable} for torch, triton, cpu and cuda, on this machine."""
    return {name: (b.unavailable_reason() or "ok") for name, b in BACKENDS.items()}


def check_backend_name(name: object) -> str:
    """`name` if it names a backend ("auto" or a registered one), else a TypeError or ValueError
    naming the argument `backend`. Whether that backend can run is checked when it is used
    (:func:`resolve_backend`)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string (auto, {', '.join(BACKENDS)}), got {type(name).__name__}")
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}; got {name!r}")
    return name


@torch.compiler.assume_constant_result  # a constant while tracing: it reads the environment
def resolve_backend(name: object = "auto", device: torch.device | str = "cpu") -> str:
    """The name of the backend the ops use for `name` on tensors of `device`: the name itself,
    or for "auto" the FASTADV_BACKEND environment variable or else the fastest available one
    (cpu for CPU tensors; cuda, then triton, for GPU tensors; torch otherwise). Raises TypeError
    or ValueError for a bad name (:func:`check_backend_name`, or an unknown one in
    FASTADV_BACKEND) and RuntimeError, saying why, when the backend cannot run there."""
    name = check_backend_name(name)
    device = torch.device(device)
    source = "backend"
    if name == "auto":
        override = os.environ.get("FASTADV_BACKEND", "").strip()
        if override and override != "auto":
            name, source = override, "FASTADV_BACKEND"
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ("torch",)):
            if BACKENDS[candidate].unavailable_reason(device) is None:
                return candidate
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    reason = BACKENDS[name].unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"{source}: backend {name!r} is unavailable: {reason}")
    return name
