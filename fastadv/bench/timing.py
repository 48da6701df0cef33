"""Timing of benchmark providers: samples of seconds per call, and their quantiles."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import torch


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> list[float]:
    """Seconds per call, `repeat` samples after `warmup` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        samples = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return samples
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 3, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each CPU provider, `rounds` samples each after `warmup` rounds: the
    providers are called in turn, round after round, so on a shared host every one meets the same
    spells of load and a ratio taken within a round (sample r of each) compares like with like.
    Each round calls them in a new order (a generator seeded with `seed`): in a fixed order one
    provider always runs right after the same other one, and the one after torch.compile met caches
    full of compile's intermediates (a CIFAR L2 step measured 1.03-1.35x slower there than the
    same step called later in the round, 2026-12-06)."""
    rng = random.Random(seed)
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            fns[name]()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                samples[name].append(elapsed)
    return samples


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80)."""
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=10, method="inclusive")
    return statistics.median(samples), q[1], q[7]
