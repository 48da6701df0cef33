"""The CPU steps' fraction of copy bandwidth, in one process, interleaved, min of repeats.

For each case (L2 on the CIFAR and ImageNet batches, L-inf on 16M elements) x dtype x layout
(contiguous, channels_last) it calls a copy of x_adv into out (`out.copy_(x_adv)`), the fused step
(backend="cpu") and the fused L-inf step on the same tensors (for the L2 cases: a stream that reads
the three inputs once and writes once, the least an L2 step moves), round after round, in an order
shuffled each round, and keeps each one's fastest call: on a shared host the minimum is the run
least disturbed by other jobs, and interleaving exposes every provider to the same spells of load.

Fraction of copy bandwidth = (bytes the step must move / its time) / (copy's bytes / copy's
time): x_adv, grad and x read once and out written once (16 bytes per float32 element) against
the copy's 8, as `fastadv bench` counts them.

    PYTHONPATH=$PWD python benchmarks/step_copy_ratio.py [--rounds 30] [--cases cifar,imagenet,16M]
        [--dtypes float32,float16,bfloat16] [--layouts contiguous,channels_last] [--threads N] [--csv FILE]
"""

from __future__ import annotations

import argparse
import csv
import platform
import subprocess

import torch

import fastadv
from fastadv.backends.cpu_backend import cpu_isa
from fastadv.bench.step import DTYPES, L2_ALPHA, L2_BATCHES, L2_EPS, LINF_ALPHA, LINF_EPS, SIZES, make_inputs
from fastadv.bench.timing import interleaved


def shape_of(case: str) -> tuple[str, tuple]:
    if case in L2_BATCHES:
        return "l2", L2_BATCHES[case]
    return "linf", (SIZES[case] // 1024, 1024)


def calls(step: str, t: dict[str, torch.Tensor]) -> dict[str, object]:
    def l2():
        fastadv.l2_step(t["x_adv"], t["grad"], t["x"], L2_EPS, L2_ALPHA, out=t["out"], backend="cpu")

    def linf():
        fastadv.linf_step(t["x_adv"], t["grad"], t["x"], LINF_EPS, LINF_ALPHA, out=t["out"], backend="cpu")

    def copy():
        t["out"].copy_(t["x_adv"])

    return {"copy": copy, "l2": l2, "linf": linf} if step == "l2" else {"copy": copy, "linf": linf}


def measure(fns: dict[str, object], rounds: int) -> dict[str, float]:
    """Each provider's fastest call over `rounds` interleaved rounds (on a shared host the minimum
    is the call least disturbed by other jobs)."""
    return {name: min(samples) for name, samples in interleaved(fns, rounds).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cases", default="cifar,imagenet,16M")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--layouts", default="contiguous,channels_last")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--csv", default=None, help="append the rows to this CSV file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = f"{cpu}, {torch.get_num_threads()} threads, build {cpu_isa()}"
    print(f"{device}, git {sha}, min of {args.rounds} interleaved rounds")
    print("| step | case | dtype | layout | copy ms | fused ms | fused / copy bandwidth | L-inf stream / copy |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
    rows = []
    for case in args.cases.split(","):
        step, shape = shape_of(case)
        for dtype in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                if step == "linf" and layout == "channels_last":
                    continue  # a 2-d tensor has no channels_last
                t = make_inputs(shape, DTYPES[dtype], torch.device("cpu"), layout=layout)
                best = measure(calls(step, t), args.rounds)
                el = t["x"].element_size()
                step_bytes, copy_bytes = 4 * t["x"].numel() * el, 2 * t["x"].numel() * el
                frac = {k: (step_bytes / v) / (copy_bytes / best["copy"]) for k, v in best.items() if k != "copy"}
                stream = f"{100 * frac['linf']:.0f}%" if step == "l2" else "-"
                print(f"| {step} | {case} | {dtype} | {layout} | {1e3 * best['copy']:.3f} | "
                      f"{1e3 * best[step]:.3f} | {100 * frac[step]:.0f}% | {stream} |", flush=True)  # fmt: skip
                rows.append([device, sha, step, case, dtype, layout, best["copy"], best[step], frac[step]])
                del t
    if args.csv:
        with open(args.csv, "a", newline="") as f:
            w = csv.writer(f)
            if f.tell() == 0:
                w.writerow(["device", "git_sha", "step", "case", "dtype", "layout", "copy_s", "fused_s", "of_copy"])
            w.writerows(rows)


if __name__ == "__main__":
    main()
