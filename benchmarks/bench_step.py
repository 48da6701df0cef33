"""pytest-benchmark: the fused L-inf and L2 steps against PyTorch eager, torch.compile and a copy.

    pytest benchmarks/bench_step.py --benchmark-only [--benchmark-json out.json]

Cases from FASTADV_BENCH_SIZES (L-inf element counts; default "1M,16M", 64M too on a GPU) and
FASTADV_BENCH_L2_BATCHES (default "cifar,imagenet"). Providers and byte counts are those of
`fastadv bench` (fastadv/bench/step.py), which also writes CSV rows with ratios.
"""

import os

import pytest
import torch

from fastadv.bench import step

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = os.environ.get("FASTADV_BENCH_SIZES", "1M,16M,64M" if DEVICE.type == "cuda" else "1M,16M").split(",")
L2_BATCHES = os.environ.get("FASTADV_BENCH_L2_BATCHES", "cifar,imagenet").split(",")
CASES = step.cases(step.KERNELS, SIZES, L2_BATCHES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("dtype", list(step.DTYPES))
@pytest.mark.parametrize("provider", step.providers(DEVICE))
def test_step(benchmark, case, dtype, provider):
    kernel, name, shape = case
    tensors = step.make_inputs(shape, step.DTYPES[dtype], DEVICE)
    fn = step.provider_fn(kernel, provider, tensors)
    benchmark.group = f"{kernel} {name} {dtype} on {DEVICE.type}"
    benchmark.extra_info["bytes_moved"] = step.bytes_moved(provider, tensors)
    benchmark.extra_info["design_bytes"] = step.design_bytes(kernel, provider, tensors)
    if DEVICE.type == "cuda":
        run = fn

        def fn():
            run()
            torch.cuda.synchronize()

    benchmark.pedantic(fn, warmup_rounds=3, rounds=10, iterations=1)
