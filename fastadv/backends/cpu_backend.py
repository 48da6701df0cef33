"""The `cpu` backend: the C++ extension's OpenMP loop (csrc/cpu/), built per x86-64 ISA level, and
the choice of the build it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .extension import ExtensionBackend, load_error

cpu = ExtensionBackend("cpu", "cpu")

# The CPU loop's builds per x86-64 ISA level (csrc/cpu/step_cpu.h).
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


def cpu_l2_pipelined() -> bool:
    """Whether the build in use runs float32 L2 steps with their three passes pipelined across
    samples (True) or sample by sample (False). Both give the same bits; which is faster depends on
    the core, so each build times both once, at its first float32 L2 step (a few milliseconds),
    unless the environment variable FASTADV_CPU_L2_PIPELINE says on or off (auto or unset:
    measured). Raises RuntimeError when fastadv._C is not built or that variable has another
    value."""
    _require_extension()
    return torch.ops.fastadv.cpu_l2_pipelined()


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
