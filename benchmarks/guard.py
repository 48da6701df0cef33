"""Benchmark guard (run by .ci/run): fails when a fused CPU step falls behind in any dtype or layout.

In one process, for every dtype (float32, float16, bfloat16) x step (L-inf, L2) x layout
(contiguous, channels_last) on a mid-size batch, it times the fused step (backend="cpu"), the
PyTorch eager formulation (fastadv.bench.step's eager_chain / eager_l2) and a same-size copy,
interleaved call by call, and compares medians. It fails when

- fused is under its floor times the eager formulation (FLOORS), or
- fused moves its bytes at under its floor fraction of the copy's bandwidth,

in any case. The floors are about half of what the development machines measure (see
benchmarks/README.md, "Benchmark guard"): generous, so a loaded host does not trip them, and still
far above what the per-element rounding rule gave float16 and bfloat16 (which it would have
caught: the L2 float16 step at 0.6x eager). Ratios measured side by side cancel most of the
host's load, and so does one thread: with two OpenMP threads on a busy two-core host every call
waited for a descheduled thread, and copy, eager and fused all took about one scheduler quantum
(the guard measures the loops' work per core, which is what a slower kernel changes). A case under
a floor is measured twice more, with more rounds, and fails only if every measurement is under.

    python benchmarks/guard.py [--rounds N]      (FASTADV_CPU_ISA=avx2 etc. picks the CPU build)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import fastadv
from fastadv.backends.cpu_backend import cpu_isa
from fastadv.bench.step import L2_ALPHA, L2_EPS, LINF_ALPHA, LINF_EPS, eager_chain, eager_l2, make_inputs
from fastadv.bench.timing import interleaved

SHAPE = (16, 3, 96, 96)  # 442K elements: 27K per sample, past the L1 and L2 caches of a core
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last")
# (step, dtype) -> (fused vs eager, fraction of copy bandwidth), about half of the medians measured
# on the development host (AMD EPYC, AVX2 build, one thread; benchmarks/README.md). PyTorch's own
# float16/bfloat16 chains are fast at this size, so their floors vs eager sit under 1x; every case
# of the per-element rounding rule (0.03x-0.6x eager, 0-11% of copy) falls under one of its floors.
FLOORS = {
    ("linf", torch.float32): (2.0, 0.3),
    ("linf", torch.float16): (0.7, 0.08),
    ("linf", torch.bfloat16): (0.7, 0.08),
    ("l2", torch.float32): (1.3, 0.18),  # its eager chain's time swings most on a busy host (1.99x-7.8x)
    ("l2", torch.float16): (0.5, 0.04),
    ("l2", torch.bfloat16): (0.5, 0.04),
}


def providers(step: str, t: dict[str, torch.Tensor]) -> dict[str, object]:
    if step == "linf":
        eps, alpha, fused, eager = LINF_EPS, LINF_ALPHA, fastadv.linf_step, eager_chain
    else:
        eps, alpha, fused, eager = L2_EPS, L2_ALPHA, fastadv.l2_step, eager_l2
    return {
        "fused": lambda: fused(t["x_adv"], t["grad"], t["x"], eps, alpha, out=t["out"], backend="cpu"),
        "eager": lambda: eager(t["x_adv"], t["grad"], t["x"], eps, alpha),
        "copy": lambda: t["out"].copy_(t["x_adv"]),
    }


def ratios(step: str, dtype: torch.dtype, layout: str, rounds: int) -> tuple[float, float]:
    """(fused vs eager, fraction of copy bandwidth: a step moves 4 elements per element, a copy 2),
    each the median over rounds of the ratio within a round, the three called in turn."""
    fns = providers(step, make_inputs(SHAPE, dtype, torch.device("cpu"), layout=layout))
    seconds = interleaved(fns, rounds, warmup=2)
    vs_eager = [e / f for e, f in zip(seconds["eager"], seconds["fused"], strict=True)]
    of_copy = [2 * c / f for c, f in zip(seconds["copy"], seconds["fused"], strict=True)]
    return statistics.median(vs_eager), statistics.median(of_copy)


def under_floor(step: str, dtype: torch.dtype, vs_eager: float, of_copy: float) -> bool:
    floor_eager, floor_copy = FLOORS[step, dtype]
    return vs_eager < floor_eager or of_copy < floor_copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case (default: 15)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: must be at least 1, got {args.rounds}")
    isa = cpu_isa()
    torch.set_num_threads(1)
    print(f"benchmark guard: cpu build {isa}, 1 thread, shape {SHAPE}, medians of per-round ratios")
    print(f"{'step':>5} {'dtype':>9} {'layout':>14} {'vs eager':>9} {'floor':>6} {'of copy':>8} {'floor':>6}")
    failures = []
    for step in ("linf", "l2"):
        for dtype in DTYPES:
            for layout in LAYOUTS:
                vs_eager, of_copy = ratios(step, dtype, layout, args.rounds)
                for _ in range(2):  # a busy moment on the host: measure again, longer, keep the best
                    if not under_floor(step, dtype, vs_eager, of_copy):
                        break
                    again = ratios(step, dtype, layout, 2 * args.rounds)
                    vs_eager, of_copy = max(vs_eager, again[0]), max(of_copy, again[1])
                flag = "  UNDER FLOOR" if under_floor(step, dtype, vs_eager, of_copy) else ""
                name = str(dtype).removeprefix("torch.")
                floor_eager, floor_copy = FLOORS[step, dtype]
                print(f"{step:>5} {name:>9} {layout:>14} {vs_eager:>8.2f}x {floor_eager:>5.1f}x "
                      f"{100 * of_copy:>7.0f}% {100 * floor_copy:>5.0f}%{flag}")  # fmt: skip
                if flag:
                    failures.append(f"{step} {name} {layout}: {vs_eager:.2f}x eager, {100 * of_copy:.0f}% of copy")
    if failures:
        message = "benchmark guard FAILED (fused step under its floor; benchmarks/README.md): " + "; ".join(failures)
        print(message, file=sys.stderr)
        return 1
    print("benchmark guard passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
