"""The fused attack steps against PyTorch eager, torch.compile of the eager formulation, and a
same-size copy (the bandwidth ceiling), in one run.

Bytes: `bandwidth` counts the least any implementation must move: x_adv, grad and x read once,
out written once (16 bytes per float32 element). `design_bandwidth` counts what each fused design
moves by construction: the same for L-inf; for L2, the one-launch GPU kernels (a sample that
fits in one block/program) move the minimum and the split reduction for larger samples reads
grad three times and x_adv, x twice (32 bytes per float32 element; see backends/triton_backend/l2.py and
csrc/cuda/step_cuda.cu). The CPU L2 loop reads each sample three times while it is in cache, so
its memory traffic is the minimum. `fraction_of_copy_bandwidth` uses the design bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .. import ops
from ..backends import BACKENDS
from .results import Row, environment
from .timing import measure, quantiles

SIZES = {"1M": 2**20, "16M": 2**24, "64M": 2**26}
L2_BATCHES = {"cifar": (512, 3, 32, 32), "imagenet": (64, 3, 224, 224)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
KERNELS = ("linf_step", "l2_step")
LINF_EPS, LINF_ALPHA = 8 / 255, 2 / 255
L2_EPS, L2_ALPHA = 0.5, 0.1
# Largest sample each GPU backend finishes in one launch (see the kernels).
_L2_ONE_LAUNCH = {"triton": 8192, "cuda": 4096}


def eager_chain(x_adv, grad, x, eps: float, alpha: float, lower: float = 0.0, upper: float = 1.0):
    """The usual PyTorch formulation of the L-inf step (sign, mul, add, max, min, clamp): each op
    a pass over memory."""
    y = x_adv + alpha * torch.sign(grad)
    y = torch.max(y, x - eps)
    y = torch.min(y, x + eps)
    return torch.clamp(y, lower, upper)


def eager_l2(x_adv, grad, x, eps: float, alpha: float, lower: float = 0.0, upper: float = 1.0):
    """The L2 step as torchattacks' PGDL2 writes it: norms, divide, add, renorm, clamp."""
    batch, ones = x.shape[0], (1,) * (x.dim() - 1)
    grad_norms = torch.norm(grad.reshape(batch, -1), p=2, dim=1) + 1e-10
    adv = x_adv + alpha * (grad / grad_norms.view(batch, *ones))
    delta = adv - x
    delta_norms = torch.norm(delta.reshape(batch, -1), p=2, dim=1)
    factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
    return torch.clamp(x + delta * factor.view(batch, *ones), min=lower, max=upper)


_EAGER = {"linf_step": (eager_chain, LINF_EPS, LINF_ALPHA), "l2_step": (eager_l2, L2_EPS, L2_ALPHA)}
_FUSED = {"linf_step": ops.linf_step, "l2_step": ops.l2_step}
_compiled: dict[str, Callable] = {}


def compiled(kernel: str) -> Callable:
    if kernel not in _compiled:
        _compiled[kernel] = torch.compile(_EAGER[kernel][0], dynamic=True)
    return _compiled[kernel]


def cases(kernels: Iterable[str], sizes: Iterable[str], l2_batches: Iterable[str]) -> list[tuple[str, str, tuple]]:
    """(kernel, case name, shape) to measure."""
    out = []
    for kernel in kernels:
        if kernel == "linf_step":
            out += [(kernel, size, (SIZES[size] // 1024, 1024)) for size in sizes]
        else:
            out += [(kernel, name, L2_BATCHES[name]) for name in l2_batches]
    return out


def make_inputs(
    shape: tuple,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    layout: str = "contiguous",
    grad_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """x_adv, grad, x and out (empty) of `shape` in `dtype` (grad in `grad_dtype` when given), in a
    layout of LAYOUTS."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
    x_adv = (x + LINF_EPS * (2 * torch.rand(shape, generator=gen, device=device) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen, device=device)
    fmt = LAYOUTS[layout]
    dtypes = {"x_adv": dtype, "grad": grad_dtype or dtype, "x": dtype}
    values = {"x_adv": x_adv, "grad": grad, "x": x}
    t = {name: v.to(dtypes[name]).contiguous(memory_format=fmt) for name, v in values.items()}
    t["out"] = torch.empty_like(t["x"])
    return t


def providers(device: torch.device, with_compile: bool = True) -> list[str]:
    """Everything that runs on `device`: eager, compile, copy and each available fused backend."""
    names = ["eager"] + (["compile"] if with_compile else []) + ["copy"]
    return names + [f"fused-{n}" for n, b in BACKENDS.items() if n != "torch" and b.unavailable_reason(device) is None]


def provider_fn(kernel: str, name: str, t: dict[str, torch.Tensor]) -> Callable[[], object]:
    chain, eps, alpha = _EAGER[kernel]
    if name == "eager":
        return lambda: chain(t["x_adv"], t["grad"], t["x"], eps, alpha)
    if name == "compile":
        fn = compiled(kernel)
        return lambda: fn(t["x_adv"], t["grad"], t["x"], eps, alpha)
    if name == "copy":
        return lambda: t["out"].copy_(t["x_adv"])
    if name.startswith("fused-"):
        backend, op = name.removeprefix("fused-"), _FUSED[kernel]
        return lambda: op(t["x_adv"], t["grad"], t["x"], eps, alpha, out=t["out"], backend=backend)
    raise ValueError(f"provider: unknown provider {name!r}")


def bytes_moved(name: str, t: dict[str, torch.Tensor]) -> int:
    """The least a step must move (or a copy's bytes)."""
    n, el_x, el_g = t["x"].numel(), t["x"].element_size(), t["grad"].element_size()
    return 2 * n * el_x if name == "copy" else n * (3 * el_x + el_g)


def design_bytes(kernel: str, name: str, t: dict[str, torch.Tensor]) -> int:
    """What the named design moves (see the module docstring)."""
    backend = name.removeprefix("fused-")
    sample = t["x"][0].numel() if t["x"].dim() > 0 and t["x"].shape[0] else 0
    if kernel == "l2_step" and backend in _L2_ONE_LAUNCH and sample > _L2_ONE_LAUNCH[backend]:
        n, el_x, el_g = t["x"].numel(), t["x"].element_size(), t["grad"].element_size()
        return n * (3 * el_g + 5 * el_x)
    return bytes_moved(name, t)


def run(measured: list[tuple[str, str, tuple]], dtypes: Iterable[str], device: torch.device, names: Iterable[str],
        warmup: int = 3, repeat: int = 10, progress: bool = True) -> list[Row]:  # fmt: skip
    """Measures every provider on every (case, dtype): time, bandwidth, design bandwidth,
    speed-up over eager and fraction of copy bandwidth rows."""
    from tqdm import tqdm

    names, dtypes = list(names), list(dtypes)
    env = environment(device)
    rows: list[Row] = []
    bar = tqdm(total=len(measured) * len(dtypes) * len(names), desc="bench", disable=not progress, unit="run")
    for kernel, case, shape in measured:
        for dtype in dtypes:
            t = make_inputs(shape, DTYPES[dtype], device)
            seconds: dict[str, tuple[float, float, float]] = {}
            for name in names:
                bar.set_postfix_str(f"{kernel} {case} {dtype} {name}")
                seconds[name] = quantiles(measure(provider_fn(kernel, name, t), device, warmup, repeat))
                bar.update()

            numel = t["x"].numel()

            def add(name, metric, unit, values, kernel=kernel, case=case, dtype=dtype, numel=numel):
                rows.append(Row(**env, kernel=kernel, provider=name, dtype=dtype, size=case, numel=numel,
                                metric=metric, unit=unit, median=values[0], p20=values[1], p80=values[2]))  # fmt: skip

            copy_gbps = bytes_moved("copy", t) / seconds["copy"][0] / 1e9 if "copy" in seconds else None
            for name, (med, p20, p80) in seconds.items():
                add(name, "time", "ms", (med * 1e3, p20 * 1e3, p80 * 1e3))
                # the slower time gives the lower bandwidth
                add(name, "bandwidth", "GB/s", [bytes_moved(name, t) / s / 1e9 for s in (med, p80, p20)])
                design = [design_bytes(kernel, name, t) / s / 1e9 for s in (med, p80, p20)]
                if name.startswith("fused-"):
                    add(name, "design_bandwidth", "GB/s", design)
                if "eager" in seconds and name != "eager":
                    ratio = seconds["eager"][0] / med
                    add(name, "speedup_vs_eager", "x", (ratio, ratio, ratio))
                if copy_gbps and name != "copy":
                    frac = design[0] / copy_gbps
                    add(name, "fraction_of_copy_bandwidth", "ratio", (frac, frac, frac))
            del t
    bar.close()
    return rows


def format_table(rows: list[Row]) -> str:
    """A readable table: one line per (kernel, case, dtype, provider)."""
    by_key: dict[tuple, dict[str, float]] = {}
    for r in rows:
        by_key.setdefault((r.kernel, r.size, r.dtype, r.provider), {})[r.metric] = r.median
    lines = [f"{'kernel':>9} {'case':>8} {'dtype':>9} {'provider':>14} {'ms':>9} {'GB/s':>8} {'vs eager':>9} "
             f"{'of copy':>8}"]  # fmt: skip
    for (kernel, case, dtype, provider), m in by_key.items():
        speed = f"{m['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in m else "-"
        frac = f"{100 * m['fraction_of_copy_bandwidth']:.0f}%" if "fraction_of_copy_bandwidth" in m else "-"
        timing = f"{m['time']:>9.3f} {m['bandwidth']:>8.1f}"
        lines.append(f"{kernel:>9} {case:>8} {dtype:>9} {provider:>14} {timing} {speed:>9} {frac:>8}")
    return "\n".join(lines)
