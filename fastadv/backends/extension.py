"""The C++ extension backends: `cpu` (OpenMP loop) and `cuda` (CUDA kernel), both in fastadv._C.

Importing fastadv._C registers the ops fastadv::linf_step_out and fastadv::linf_project_out
(schemas in csrc/register.cpp). Their fake implementations are registered here, so the ops
trace under torch.compile(fullgraph=True).
"""

from __future__ import annotations

import functools

import torch

from .._checks import Param


@functools.cache
def load_error() -> str | None:
    """None when fastadv._C is loaded, else why it is not."""
    try:
        from .. import _C  # noqa: F401  (registers the ops)
    except ImportError as error:
        return (
            f"the C++ extension fastadv._C is not built ({error}); reinstall with "
            "`pip install --no-build-isolation -e .` and a C++ compiler"
        )
    _register_fakes()
    return None


def _has_kernel(device_type: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastadv::linf_step_out", device_type)


def _register_fakes() -> None:
    # The ops only write `out`, so their fake versions have nothing to compute.
    @torch.library.register_fake("fastadv::linf_step_out")
    def _(x_adv, grad, x, eps, alpha, lower, upper, values, targeted, out):
        return None

    for op in ("fastadv::linf_project_out", "fastadv::l2_project_out"):

        @torch.library.register_fake(op)
        def _(x_adv, x, eps, lower, upper, values, out):
            return None

    @torch.library.register_fake("fastadv::l2_step_out")
    def _(x_adv, grad, x, eps, alpha, lower, upper, values, targeted, out):
        return None


def _tables(*params: Param) -> tuple:
    return tuple(p.table for p in params)


def _values(*params: Param) -> list[float]:
    return [p.value for p in params]


class _ExtensionBackend:
    def __init__(self, name: str, device_type: str):
        self.NAME = name
        self.device_type = device_type

    def unavailable_reason(self, device: torch.device | None = None) -> str | None:
        error = load_error()
        if error is not None:
            return error
        if not _has_kernel(self.device_type.upper()):
            return (
                "fastadv._C was built without CUDA kernels (no nvcc or a CPU-only torch at build time; "
                "rebuild with FASTADV_BUILD_CUDA=1)"
            )
        if self.device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU is available"
        if device is not None and device.type != self.device_type:
            return f"it runs on {self.device_type} tensors, these are on {device}"
        return None

    def linf_step_into(self, x_adv, grad, x, eps, alpha, lower, upper, targeted, out) -> None:
        torch.ops.fastadv.linf_step_out(
            x_adv, grad, x, *_tables(eps, alpha, lower, upper), _values(eps, alpha, lower, upper), targeted, out
        )

    def linf_project_into(self, x_adv, x, eps, lower, upper, out) -> None:
        torch.ops.fastadv.linf_project_out(x_adv, x, *_tables(eps, lower, upper), _values(eps, lower, upper), out)

    def l2_step_into(self, x_adv, grad, x, eps, alpha, lower, upper, targeted, out) -> None:
        torch.ops.fastadv.l2_step_out(
            x_adv, grad, x, *_tables(eps, alpha, lower, upper), _values(eps, alpha, lower, upper), targeted, out
        )

    def l2_project_into(self, x_adv, x, eps, lower, upper, out) -> None:
        torch.ops.fastadv.l2_project_out(x_adv, x, *_tables(eps, lower, upper), _values(eps, lower, upper), out)


cpu = _ExtensionBackend("cpu", "cpu")
cuda = _ExtensionBackend("cuda", "cuda")
