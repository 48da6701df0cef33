"""The emulated CUDA kernels as test-only fastadv backends: cuda-emulated-forward, -reverse and
-random (the thread order inside each block).

Every call runs the real launchers of csrc/cuda/step_cuda.cu (build.py) on CPU tensors, with:
- each tensor copied into a buffer with guard bands of signalling NaNs around it (a different
  payload per argument, at the original's address modulo 64, so alignment decisions are the
  same as for the caller's tensor); after the call the guard bands must be intact and the inputs
  unchanged, so an out-of-bounds write or a write into an input fails the test;
- a current stream that is not the default stream, so a launch on another stream fails;
- scratch tensors and shared memory filled with NaN (runtime.h), so a missed write shows.
Tensors of more than _GUARD_LIMIT elements (the >2^31-element tests) run without guard copies.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from dataclasses import dataclass

import torch

from . import build

ORDERS = ("forward", "reverse", "random")
NAMES = tuple(f"cuda-emulated-{order}" for order in ORDERS)
_GUARD_ELEMENTS = 64
_GUARD_LIMIT = 1 << 26
# Signalling-NaN bit patterns with a payload per argument: what a kernel copies out of a guard
# band into another keeps its payload (projections pass NaNs through untouched), so it shows.
_SENTINEL_BASE = {torch.float32: 0x7FA00000, torch.float16: 0x7C00, torch.bfloat16: 0x7F80}
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_ROLE = {"x_adv": 1, "grad": 2, "x": 3, "out": 4, "eps": 5, "alpha": 6, "lower": 7, "upper": 8}


@functools.cache
def build_error() -> str | None:
    """None once the emulation is built and loaded, else why it is not."""
    try:
        build.load()
    except build.EmulationBuildError as error:
        return str(error)
    return None


@dataclass
class _Settings:
    blocks: tuple[int, ...] = ()  # empty: every block; negative: counted from the end
    execute: bool = True
    device: int = 0  # the emulated GPU: 0 an H100 SXM (132 multiprocessors), 1 one of 2


_settings = _Settings()
last_launches: list[dict] = []


@contextlib.contextmanager
def sampled_blocks(*blocks: int):
    """Runs only these blocks of every launch (negative: from the end of the grid): with
    virtual_tensor, kernels can be checked on tensors of more than 2^31 elements."""
    previous = _settings.blocks
    _settings.blocks = tuple(blocks)
    try:
        yield
    finally:
        _settings.blocks = previous


@contextlib.contextmanager
def geometry_only():
    """Launches are checked (grid, block, stream, guard, error checks) and recorded, not run."""
    previous = _settings.execute
    _settings.execute = False
    try:
        yield
    finally:
        _settings.execute = previous


@contextlib.contextmanager
def small_gpu():
    """Runs on the emulated GPU of 2 multiprocessors (16 resident blocks of 256 threads, so grids
    are capped at 64 blocks): the kernels' grid-stride loops then run several rounds on small
    tensors."""
    previous = _settings.device
    _settings.device = 1
    try:
        yield
    finally:
        _settings.device = previous


def virtual_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor over reserved, untouched address space (zeros; memory only where written)."""
    build.load()
    return torch.ops.fastadv_cuda_emulation.virtual_tensor(list(shape), dtype)


def _parse_launches(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        kernel, site, grid, block, ran = line.split("|")
        rows.append(
            {
                "kernel": kernel,
                "site": site,
                "grid": tuple(int(v) for v in grid.split()),
                "block": tuple(int(v) for v in block.split()),
                "blocks_run": int(ran),
            }
        )
    return rows


class _Guarded:
    """A copy of `t` inside a buffer of sentinels, at t's address modulo 64."""

    def __init__(self, t: torch.Tensor, role: str):
        self.original = t
        self.role = role
        sentinel = _SENTINEL_BASE[t.dtype] | _ROLE[role]
        span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
        item = t.element_size()
        self.buffer = torch.empty(span + 2 * _GUARD_ELEMENTS + 64 // item, dtype=t.dtype)
        self.bits = self.buffer.view(_INT_VIEW[t.dtype])
        self.bits.fill_(sentinel if sentinel < 2 ** (8 * item - 1) else sentinel - 2 ** (8 * item))
        self.sentinel = self.bits[0].item()
        shift = ((t.data_ptr() - self.buffer.data_ptr()) % 64) // item
        self.start = _GUARD_ELEMENTS + shift
        self.end = self.start + span
        self.view = self.buffer.as_strided(t.shape, t.stride(), self.start)
        self.view.copy_(t)

    def check_guards(self, op: str) -> None:
        for name, band in (("before", self.bits[: self.start]), ("after", self.bits[self.end :])):
            changed = (band != self.sentinel).nonzero()
            if changed.numel():
                where = changed[0].item() - (self.start if name == "before" else 0)
                raise AssertionError(
                    f"{op} wrote outside {self.role}: {changed.numel()} guard element(s) {name} it changed "
                    f"(first at offset {where} {'from its start' if name == 'before' else 'past its end'})"
                )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(_INT_VIEW[a.dtype]), b.view(_INT_VIEW[b.dtype]))


class EmulatedCudaBackend:
    def __init__(self, order: str):
        self.order = order
        self.NAME = f"cuda-emulated-{order}"
        self._calls = 0

    def unavailable_reason(self, device: torch.device | None = None) -> str | None:
        if device is not None and device.type != "cpu":
            return f"the CUDA emulation runs on CPU tensors, these are on {device}"
        return build_error()

    def linf_step_into(self, x_adv, grad, x, eps, alpha, lower, upper, targeted, out) -> None:
        self._run("linf_step_out", x_adv, grad, x, (eps, alpha, lower, upper), targeted, out)

    def linf_project_into(self, x_adv, x, eps, lower, upper, out) -> None:
        self._run("linf_project_out", x_adv, None, x, (eps, lower, upper), None, out)

    def l2_step_into(self, x_adv, grad, x, eps, alpha, lower, upper, targeted, out) -> None:
        self._run("l2_step_out", x_adv, grad, x, (eps, alpha, lower, upper), targeted, out)

    def l2_project_into(self, x_adv, x, eps, lower, upper, out) -> None:
        self._run("l2_project_out", x_adv, None, x, (eps, lower, upper), None, out)

    def _run(self, op_name, x_adv, grad, x, params, targeted, out) -> None:
        op = getattr(getattr(torch.ops, build.NAMESPACE), op_name)
        names = ("eps", "alpha", "lower", "upper") if len(params) == 4 else ("eps", "lower", "upper")
        in_place = out.data_ptr() == x_adv.data_ptr()
        guard = x_adv.numel() <= _GUARD_LIMIT
        wrap = (lambda t, role: _Guarded(t, role)) if guard else (lambda t, role: None)
        guarded = {"x_adv": wrap(x_adv, "x_adv"), "x": wrap(x, "x")}
        if grad is not None:
            guarded["grad"] = wrap(grad, "grad")
        guarded["out"] = guarded["x_adv"] if in_place else wrap(out, "out")
        for name, p in zip(names, params, strict=True):
            if p.table is not None:
                guarded[name] = wrap(p.table, name)

        def arg(name, t):
            return guarded[name].view if guard and t is not None else t

        tables = [arg(name, p.table) for name, p in zip(names, params, strict=True)]
        values = [p.value for p in params]
        tensors = [arg("x_adv", x_adv)] + ([arg("grad", grad)] if grad is not None else []) + [arg("x", x)]
        flags = [targeted] if targeted is not None else []

        self._calls += 1
        seed = zlib.crc32(f"{self.NAME}{self._calls}".encode())
        control = torch.ops.fastadv_cuda_emulation
        control.configure(self.order, seed, list(_settings.blocks), _settings.execute, _settings.device)
        control.begin_op(0x5EED0 + self._calls)  # a current stream that is not the default one
        try:
            op(*tensors, *tables, values, *flags, arg("out", out))
        finally:
            launches = control.end_op()
        last_launches[:] = _parse_launches(launches)
        if not guard:
            return
        for g in dict.fromkeys(guarded.values()):  # out and x_adv may be one buffer
            g.check_guards(op_name)
        for name, g in guarded.items():
            if name != "out" and not (in_place and name == "x_adv") and not _same_bits(g.view, g.original):
                raise AssertionError(f"{op_name} modified its input {name}")
        out.copy_(guarded["out"].view)


BACKENDS = {name: EmulatedCudaBackend(order) for name, order in zip(NAMES, ORDERS, strict=True)}
