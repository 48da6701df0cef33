"""The C++ extension backends: `cpu` (an OpenMP loop) and `cuda` (CUDA kernels), both in
fastadv._C.

Importing fastadv._C defines the four ops fastadv::linf_step_out, linf_project_out, l2_step_out
and l2_project_out (schemas in csrc/schemas.h) with kernels for each device it was built for.
Their fake kernels are registered here, as the module loads, so the ops trace under
torch.compile(fullgraph=True).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


# ---- the CPU loop's builds per x86-64 ISA level (csrc/cpu/step_cpu.h) ----

CPU_ISAS = ("baseline", "avx2", "avx512")


def _require_extension() -> None:
    error = load_error()
    if error is not None:
        raise RuntimeError(error)


def cpu_isa() -> str:
    """The build of the CPU loop the `cpu` backend runs: "avx512" (AVX-512 F/BW/VL/DQ), "avx2"
    (AVX2 + FMA + F16C) or "baseline" (any CPU). The environment variable FASTADV_CPU_ISA chooses
    it (baseline, avx2, avx512; unset or auto: the best this CPU runs); `use_cpu_isa` switches it.
    Raises RuntimeError when fastadv._C is not built, or FASTADV_CPU_ISA names a build that is
    unknown or that this CPU cannot run."""
    _require_extension()
    return torch.ops.fastadv.cpu_isa()


def cpu_isas() -> list[str]:
    """The builds of the CPU loop this CPU can run, slowest first (always "baseline")."""
    _require_extension()
    return list(torch.ops.fastadv.cpu_isas())


@contextlib.contextmanager
def use_cpu_isa(name: str) -> Iterator[str]:
    """Runs the `cpu` backend with the build `name` (one of `cpu_isas()`) inside the block, and
    restores the previous build after it. Raises ValueError when this CPU cannot run `name`; the
    choice is process-wide (not per thread)."""
    _require_extension()
    if name not in CPU_ISAS:
        raise ValueError(f"name must be one of {', '.join(CPU_ISAS)}, got {name!r}")
    if name not in cpu_isas():
        raise ValueError(f"name={name!r}: this CPU cannot run that build (it runs {', '.join(cpu_isas())})")
    previous = cpu_isa()
    torch.ops.fastadv.set_cpu_isa(name)
    try:
        yield name
    finally:
        torch.ops.fastadv.set_cpu_isa(previous)


cpu = ExtensionBackend("cpu", "cpu")
cuda = ExtensionBackend("cuda", "cuda")
