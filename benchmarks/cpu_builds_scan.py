"""Every CPU build against the others on every op, dtype pair, layout and parameter form, in one process.

For each op (linf_step, linf_project, l2_step, l2_project), x dtype and gradient dtype (float32,
float16, bfloat16; the projections take none), layout (contiguous, channels_last) and eps form (a
number, a per-sample tensor), on a 16x3x64x64 batch that stays in a core's cache, this times the
step under each CPU build this CPU runs (`use_cpu_isa`), the builds called in a shuffled order each round,
and prints nanoseconds per element (medians). It flags

- a case where a wider build (avx512 over avx2, avx2 over baseline) takes more than 1.15x the
  narrower build's time: the compiler can turn a vector expression into scalar code in one build only;
- a step whose gradient dtype differs from x's that takes more than twice the slower of the two
  same-dtype steps (x's dtype, the gradient's) in the same build: a mix that missed the vector loop.

That is how the AVX-512 build's 16-bit L-inf step was found to run at a third of the AVX2 build's
speed, and the baseline build's float32 L-inf step with a float16 gradient at 18x its float32 time
(2.7x its float16 time; benchmarks/README.md). The guard (benchmarks/guard.py) checks the main cases
on every CI run; this covers every combination.

    PYTHONPATH=$PWD python benchmarks/cpu_builds_scan.py [--rounds 9] [--flagged-only]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

import fastadv
from fastadv.backends.cpu_backend import cpu_isas, use_cpu_isa
from fastadv.bench.step import DTYPES, LAYOUTS, make_inputs
from fastadv.bench.timing import interleaved

SHAPE = (16, 3, 64, 64)  # 196K elements: in a core's L2 on the development hosts
OPS = ("linf_step", "linf_project", "l2_step", "l2_project")
WIDER = (("avx512", "avx2"), ("avx2", "baseline"))  # (wider, narrower)
SLOWER = 1.15  # a wider build over this times the narrower one's time is flagged
MIXED = 2.0  # a mixed-dtype step over this times the slower same-dtype step is flagged


def step_call(op: str, t: dict[str, torch.Tensor], eps) -> object:
    if op == "linf_step":
        return lambda: fastadv.linf_step(t["x_adv"], t["grad"], t["x"], eps, 0.01, out=t["out"], backend="cpu")
    if op == "l2_step":
        return lambda: fastadv.l2_step(t["x_adv"], t["grad"], t["x"], eps, 0.5, out=t["out"], backend="cpu")
    project = fastadv.linf_project if op == "linf_project" else fastadv.l2_project
    return lambda: project(t["x_adv"], t["x"], eps, out=t["out"], backend="cpu")


def under_build(isa: str, fn) -> object:
    def run():
        with use_cpu_isa(isa):
            return fn()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--flagged-only", action="store_true", help="print the flagged cases only")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds: must be at least 1, got {args.rounds}")
    torch.set_num_threads(1)
    isas = [isa for isa in ("avx512", "avx2", "baseline") if isa in cpu_isas()]
    print(f"CPU builds {', '.join(isas)}; 1 thread; shape {SHAPE}; ns per element, medians of {args.rounds} rounds")
    cases = [
        (op, dtype, grad_dtype, layout, form)
        for op, dtype, grad_dtype, layout, form in itertools.product(OPS, DTYPES, DTYPES, LAYOUTS, ("number", "tensor"))
        if op.endswith("step") or grad_dtype == dtype
    ]
    ns = {}  # case -> {isa: ns per element}
    for case in cases:
        op, dtype, grad_dtype, layout, form = case
        t = make_inputs(SHAPE, DTYPES[dtype], torch.device("cpu"), layout=layout, grad_dtype=DTYPES[grad_dtype])
        eps = torch.full((SHAPE[0],), 0.03) if form == "tensor" else 0.03
        fn = step_call(op, t, eps)
        seconds = interleaved({isa: under_build(isa, fn) for isa in isas}, args.rounds, warmup=2)
        ns[case] = {isa: statistics.median(s) * 1e9 / t["x"].numel() for isa, s in seconds.items()}
    flagged = 0
    for case, times in ns.items():
        op, dtype, grad_dtype, layout, form = case
        pairs = [(w, n) for w, n in WIDER if w in times and n in times]
        flags = [f"{w} {times[w] / times[n]:.2f}x {n}'s time" for w, n in pairs if times[w] > SLOWER * times[n]]
        if grad_dtype != dtype:
            same = [ns[op, d, d, layout, form] for d in (dtype, grad_dtype)]
            for isa, v in times.items():
                slower_same = max(s[isa] for s in same)
                if v > MIXED * slower_same:
                    flags.append(f"{isa} {v / slower_same:.2f}x its slower same-dtype step")
        flagged += bool(flags)
        if flags or not args.flagged_only:
            grad = f" grad {grad_dtype:>8}" if op.endswith("step") else " " * 14
            row = " ".join(f"{isa} {v:6.3f}" for isa, v in times.items())
            print(f"{op:>12} {dtype:>8}{grad} {layout:>13} eps {form:>6}  {row}"
                  + ("  <== " + "; ".join(flags) if flags else ""))  # fmt: skip
    print(f"{flagged} case(s) flagged")


if __name__ == "__main__":
    main()
