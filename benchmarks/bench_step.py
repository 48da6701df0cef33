"""pytest-benchmark: the fused L-inf step against PyTorch eager, torch.compile and a copy.

    pytest benchmarks/bench_step.py --benchmark-only [--benchmark-json out.json]

Sizes from FASTADV_BENCH_SIZES (default "1M,16M"; 64M too on a GPU). Providers and byte counts
are those of `fastadv bench` (fastadv/bench/step.py), which also writes CSV rows with ratios.
"""

import os

import pytest
import torch

from fastadv.bench import step

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = os.environ.get("FASTADV_BENCH_SIZES", "1M,16M,64M" if DEVICE.type == "cuda" else "1M,16M").split(",")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", list(step.DTYPES))
@pytest.mark.parametrize("provider", step.providers(DEVICE))
def test_linf_step(benchmark, size, dtype, provider):
    tensors = step.make_inputs(step.SIZES[size], step.DTYPES[dtype], DEVICE)
    fn = step.provider_fn(provider, tensors)
    benchmark.group = f"linf_step {size} {dtype} on {DEVICE.type}"
    benchmark.extra_info["bytes_moved"] = step.bytes_moved(provider, tensors)
    if DEVICE.type == "cuda":
        run = fn

        def fn():
            run()
            torch.cuda.synchronize()

    benchmark.pedantic(fn, warmup_rounds=3, rounds=10, iterations=1)
