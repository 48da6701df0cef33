"""The C++ extension fastadv._C, which the `cpu` (cpu_backend.py) and `cuda` (cuda_backend.py)
backends run: its loading and the backend class over its ops.

Importing fastadv._C defines the four ops fastadv::linf_step_out, linf_project_out, l2_step_out
and l2_project_out (schemas in csrc/schemas.h) with kernels for each device it was built for.
Their fake kernels are registered here, as the module loads, so the ops trace under
torch.compile(fullgraph=True).
"""

from __future__ import annotations

import functools

import torch

from .step_ops import StepOps, register_fake_kernels


def _load() -> str | None:
    try:
        from .. import _C  # noqa: F401  (defines the ops)
    except ImportError as error:
        return (
            f"the C++ extension fastadv._C is not built ({error}); reinstall with "
            "`pip install --no-build-isolation -e .` and a C++ compiler"
        )
    register_fake_kernels("fastadv")
    return None


_LOAD_ERROR = _load()


def load_error() -> str | None:
    """None when fastadv._C is loaded, else why it is not."""
    return _LOAD_ERROR


@functools.cache  # (asked at every op call; the kernels are registered as _C loads, above, and never change)
def _has_kernel(device_type: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastadv::linf_step_out", device_type)


class ExtensionBackend(StepOps):
    """The extension's ops on one device type."""

    def __init__(self, name: str, device_type: str):
        super().__init__("fastadv")
        self.NAME = name
        self.device_type = device_type

    def unavailable_reason(self, device: torch.device | None = None) -> str | None:
        if _LOAD_ERROR is not None:
            return _LOAD_ERROR
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
