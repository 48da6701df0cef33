"""The backends, dtypes and devices under test, as pytest parameters with the marks that select
them, and the skip for a backend this machine cannot run."""

from __future__ import annotations

import pytest
import torch
from cuda_emulation import backend as cuda_emulation

from fastadv.backends import BACKENDS

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Without a GPU, Triton runs in its interpreter and the CUDA kernels in the emulation (built on
# first use, about a minute): both are far slower than the C++ loop, so their cases are `slow`
# (the full run, CI's, has them; `-m "not slow"` is the quick loop).
_SLOW_HERE = (() if torch.cuda.is_available() else ("triton",)) + cuda_emulation.NAMES


def backend_params(names) -> tuple:
    """The backend names as parameters: the slow ones here marked `slow`, Triton's `triton` (so
    that .ci/gpu-stack can select them: the interpreter differs between Triton versions)."""

    def marks(name):
        return [pytest.mark.slow] * (name in _SLOW_HERE) + [pytest.mark.triton] * (name == "triton")

    return tuple(pytest.param(name, marks=marks(name)) for name in names)


FAST_BACKENDS = backend_params(("triton", "cpu", "cuda") + cuda_emulation.NAMES)
# The backends that run CPU tensors on this machine.
CPU_BACKENDS = backend_params(n for n, b in BACKENDS.items() if b.unavailable_reason(torch.device("cpu")) is None)


def device_params():
    """The devices to test, with the cuda one marked (so `-m cuda` selects the GPU suite)."""
    return [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES] + (
        [] if "cuda" in DEVICES else [pytest.param("cuda", marks=[pytest.mark.cuda])]
    )


def require_backend(name: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    reason = BACKENDS[name].unavailable_reason(torch.device(device))
    if reason is not None:
        pytest.skip(f"backend {name} unavailable on {device}: {reason}")
