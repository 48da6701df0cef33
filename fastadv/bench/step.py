"""The fused L-inf step against the PyTorch eager chain, torch.compile of that chain, and a
device-to-device copy (the bandwidth ceiling), in one run.

Effective bandwidth counts the bytes an attack step must move: x_adv, grad and x read once and
out written once (16 bytes per element in float32). The copy moves 2 x element size per element.
"""

from __future__ import annotations

import csv
import datetime
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from .. import ops
from ..backends import BACKENDS
from .timing import device_name, git_sha, measure, quantiles, versions

SIZES = {"1M": 2**20, "16M": 2**24, "64M": 2**26}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
EPS, ALPHA = 8 / 255, 2 / 255


def eager_chain(x_adv, grad, x, eps: float, alpha: float, lower: float = 0.0, upper: float = 1.0):
    """The usual PyTorch formulation of the step (sign, mul, add, max, min, clamp): each op a
    pass over memory."""
    y = x_adv + alpha * torch.sign(grad)
    y = torch.max(y, x - eps)
    y = torch.min(y, x + eps)
    return torch.clamp(y, lower, upper)


_compiled_chain = None


def compiled_chain():
    global _compiled_chain
    if _compiled_chain is None:
        _compiled_chain = torch.compile(eager_chain, dynamic=True)
    return _compiled_chain


def make_inputs(numel: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (numel // 1024, 1024)
    x = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
    x_adv = (x + EPS * (2 * torch.rand(shape, generator=gen, device=device) - 1)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen, device=device)
    return {"x_adv": x_adv.to(dtype), "grad": grad.to(dtype), "x": x.to(dtype), "out": torch.empty_like(x, dtype=dtype)}


def providers(device: torch.device, with_compile: bool = True) -> list[str]:
    """Everything that runs on `device`: eager, compile, copy and each available fused backend."""
    names = ["eager"] + (["compile"] if with_compile else []) + ["copy"]
    return names + [f"fused-{n}" for n, b in BACKENDS.items() if n != "torch" and b.unavailable_reason(device) is None]


def provider_fn(name: str, t: dict[str, torch.Tensor]) -> Callable[[], object]:
    if name == "eager":
        return lambda: eager_chain(t["x_adv"], t["grad"], t["x"], EPS, ALPHA)
    if name == "compile":
        chain = compiled_chain()
        return lambda: chain(t["x_adv"], t["grad"], t["x"], EPS, ALPHA)
    if name == "copy":
        return lambda: t["out"].copy_(t["x_adv"])
    if name.startswith("fused-"):
        backend = name.removeprefix("fused-")
        return lambda: ops.linf_step(t["x_adv"], t["grad"], t["x"], EPS, ALPHA, out=t["out"], backend=backend)
    raise ValueError(f"provider: unknown provider {name!r}")


def bytes_moved(name: str, t: dict[str, torch.Tensor]) -> int:
    n = t["x"].numel()
    if name == "copy":
        return 2 * n * t["x"].element_size()
    return n * (3 * t["x"].element_size() + t["grad"].element_size())


@dataclass
class Row:
    """One long-format CSV row (a measurement of one metric)."""

    timestamp: str
    git_sha: str
    device: str
    fastadv: str
    torch: str
    triton: str
    cuda: str
    python: str
    kernel: str
    provider: str
    dtype: str
    size: str
    numel: int
    metric: str
    unit: str
    median: float
    p20: float
    p80: float


def run(
    sizes: Iterable[str],
    dtypes: Iterable[str],
    device: torch.device,
    names: Iterable[str],
    warmup: int = 3,
    repeat: int = 10,
    progress: bool = True,
    kernel: str = "linf_step",
) -> list[Row]:
    """Measures every provider on every (size, dtype); returns time, bandwidth, speed-up over
    eager and fraction of copy bandwidth rows."""
    from tqdm import tqdm

    names = list(names)
    cases = [(s, d) for s in sizes for d in dtypes]
    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "device": device_name(device),
        **versions(),
    }
    rows: list[Row] = []
    bar = tqdm(total=len(cases) * len(names), desc="bench", disable=not progress, unit="run")
    for size, dtype in cases:
        t = make_inputs(SIZES[size], DTYPES[dtype], device)
        seconds: dict[str, tuple[float, float, float]] = {}
        for name in names:
            bar.set_postfix_str(f"{size} {dtype} {name}")
            seconds[name] = quantiles(measure(provider_fn(name, t), device, warmup, repeat))
            bar.update()

        def add(name, metric, unit, values, size=size, dtype=dtype):
            rows.append(
                Row(
                    **env,
                    kernel=kernel,
                    provider=name,
                    dtype=dtype,
                    size=size,
                    numel=SIZES[size],
                    metric=metric,
                    unit=unit,
                    median=values[0],
                    p20=values[1],
                    p80=values[2],
                )
            )

        copy_gbps = bytes_moved("copy", t) / seconds["copy"][0] / 1e9 if "copy" in seconds else None
        for name, (med, p20, p80) in seconds.items():
            add(name, "time", "ms", (med * 1e3, p20 * 1e3, p80 * 1e3))
            gbps = [bytes_moved(name, t) / s / 1e9 for s in (med, p80, p20)]  # slower time, lower GB/s
            add(name, "bandwidth", "GB/s", gbps)
            if "eager" in seconds and name != "eager":
                ratio = seconds["eager"][0] / med
                add(name, "speedup_vs_eager", "x", (ratio, ratio, ratio))
            if copy_gbps and name != "copy":
                frac = gbps[0] / copy_gbps
                add(name, "fraction_of_copy_bandwidth", "ratio", (frac, frac, frac))
        del t
    bar.close()
    return rows


def write_csv(rows: list[Row], path: str) -> None:
    """Appends rows to a long-format CSV (header written once)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        if new:
            writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def format_table(rows: list[Row]) -> str:
    """A readable table: one line per (size, dtype, provider)."""
    by_key: dict[tuple, dict[str, float]] = {}
    for r in rows:
        by_key.setdefault((r.size, r.dtype, r.provider), {})[r.metric] = r.median
    lines = [f"{'size':>5} {'dtype':>9} {'provider':>14} {'ms':>9} {'GB/s':>8} {'vs eager':>9} {'of copy':>8}"]
    for (size, dtype, provider), m in by_key.items():
        speed = f"{m['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in m else "-"
        frac = f"{100 * m['fraction_of_copy_bandwidth']:.0f}%" if "fraction_of_copy_bandwidth" in m else "-"
        timing = f"{m['time']:>9.3f} {m['bandwidth']:>8.1f}"
        lines.append(f"{size:>5} {dtype:>9} {provider:>14} {timing} {speed:>9} {frac:>8}")
    return "\n".join(lines)
