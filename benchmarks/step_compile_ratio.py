"""The fused CPU L2 step against torch.compile, both layouts, in one process, interleaved.

`fastadv bench` times contiguous tensors only. For each case (the CIFAR and ImageNet batches) x dtype
x layout (contiguous, channels_last) this calls `fastadv bench`'s torch.compile provider
(torchattacks' L2 step compiled, on the same tensors in the same layout) and the fused step
(backend="cpu"), round after round, in an order shuffled each round, and reports each one's minimum
and median and the ratios compile / fused (above 1: the fused step is faster). Interleaving exposes
both to the same spells of load on a shared host.

    PYTHONPATH=$PWD python benchmarks/step_compile_ratio.py [--rounds 20] [--cases cifar,imagenet]
        [--dtypes float16,bfloat16] [--layouts contiguous,channels_last] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess

import torch

from fastadv.backends.cpu_backend import cpu_isa
from fastadv.bench.step import DTYPES, L2_BATCHES, make_inputs, provider_fn
from fastadv.bench.timing import interleaved

PROVIDERS = ("compile", "fused-cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cases", default="cifar,imagenet")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--layouts", default="contiguous,channels_last")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{torch.get_num_threads()} threads, build {cpu_isa()}, git {sha}, {args.rounds} interleaved rounds")
    print("| case | dtype | layout | compile ms, min / med | fused ms, min / med | compile / fused, min / med |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for case in args.cases.split(","):
        for dtype in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                t = make_inputs(L2_BATCHES[case], DTYPES[dtype], torch.device("cpu"), layout=layout)
                times = interleaved({name: provider_fn("l2_step", name, t) for name in PROVIDERS}, args.rounds)
                lo = {k: 1e3 * min(v) for k, v in times.items()}
                med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
                c, f = "compile", "fused-cpu"
                print(f"| {case} | {dtype} | {layout} | {lo[c]:.3f} / {med[c]:.3f} | {lo[f]:.3f} / {med[f]:.3f} | "
                      f"{lo[c] / lo[f]:.2f}x / {med[c] / med[f]:.2f}x |", flush=True)  # fmt: skip
                del t


if __name__ == "__main__":
    main()
