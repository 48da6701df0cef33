"""Benchmark guard for AutoAttack: fastadv's standard cascade must not be slower than the
original's (torchattacks' port, at the same budgets) on a small case that runs in seconds.

    OMP_NUM_THREADS=1 python benchmarks/guard_autoattack.py [--samples 32] [--steps 10] [--rounds 3]

The case: the digits CNN (`fastadv.bench.attack.make_case("digits-cnn")`, the first test digits),
eps 0.1, APGD-CE, APGD-T, FAB-T at `steps` iterations and Square at 50 x steps queries on both
sides (`torchattacks_autoattack`), the two providers taking turns round by round so a busy host
slows both alike; the medians are compared. Prints one line and exits 1 when fastadv is slower
(ratio < floor, default 1.2: about half of the 2.37x it measured on the AVX2 EPYC once AutoAttack ran the
model's convolutions in channels_last, 1.40-1.43x before; the committed tables under benchmarks/results/
keep the real numbers), 0 otherwise, and 0 with a
note when torchattacks is not installed. `autoattack_ratio` is the function a combined guard
(benchmarks/guard.py) can call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def autoattack_ratio(samples: int = 32, steps: int = 10, rounds: int = 3) -> dict[str, float] | None:
    """{"fastadv_s", "original_s", "ratio" (original / fastadv: > 1 means fastadv is faster),
    "fastadv_robust", "original_robust"} from `rounds` interleaved calls of each provider on the
    small case, medians; None when torchattacks is not installed."""
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        return None
    from fastadv.attacks.autoattack import AutoAttack
    from fastadv.bench import attack

    model, x, y = attack.make_case("digits-cnn", samples, torch.device("cpu"))
    eps = attack.EPS["digits-cnn"]
    ours = AutoAttack(model, eps=eps, steps=steps, n_queries=attack.SQUARE_QUERIES_PER_STEP * steps, log=None)
    original = attack.torchattacks_autoattack(model, eps, steps)
    calls = {
        "fastadv": lambda: ours.run_standard_evaluation(x, y, bs=max(samples, 250)),
        "original": lambda: original(x, y),
    }
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    robust: dict[str, float] = {}
    for call in calls.values():  # warm-up (first-call costs: allocations, the kernels' load)
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            adv = call()
            seconds[name].append(time.perf_counter() - start)
            with torch.no_grad():
                robust[name] = float((model(adv).argmax(1) == y).float().mean())
    ours_s, theirs_s = statistics.median(seconds["fastadv"]), statistics.median(seconds["original"])
    return {
        "fastadv_s": ours_s,
        "original_s": theirs_s,
        "ratio": theirs_s / ours_s,
        "fastadv_robust": robust["fastadv"],
        "original_robust": robust["original"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor", type=float, default=1.2, help="the smallest original/fastadv ratio that passes")
    args = parser.parse_args(argv)
    result = autoattack_ratio(args.samples, args.steps, args.rounds)
    if result is None:
        print("guard autoattack: skipped (torchattacks is not installed: pip install torchattacks)")
        return 0
    ok = result["ratio"] >= args.floor
    verdict = "ok" if ok else "FAIL: fastadv is slower than the original"
    print(f"guard autoattack: fastadv {result['fastadv_s']:.2f} s, original (torchattacks) "
          f"{result['original_s']:.2f} s, {result['ratio']:.2f}x (floor {args.floor:.2f}x); robust accuracy "
          f"{result['fastadv_robust']:.2%} vs {result['original_robust']:.2%}: {verdict}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
