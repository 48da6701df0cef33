"""pytest-benchmark: PGD-10, APGD-CE-10 and CW-L2 (10 Adam steps) on one model and batch, fastadv
against a naive loss.backward() loop (PGD), the peer libraries (when they import: torchattacks,
and for PGD the Adversarial Robustness Toolbox, Foolbox and advertorch) and the model's forward +
input-gradient time.

    pytest benchmarks/bench_attack.py --benchmark-only [--benchmark-json out.json]

Models from FASTADV_BENCH_MODELS (default "digits-cnn,resnet18-cifar"); batch from
FASTADV_BENCH_BATCH (default: per model, larger on a GPU). Providers and models are those of
`fastadv bench --attack` (fastadv/bench/attack.py), which also writes CSV rows with ratios.
"""

import os

import pytest
import torch

from fastadv.bench import attack

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MODELS = os.environ.get("FASTADV_BENCH_MODELS", "digits-cnn,resnet18-cifar").split(",")
BATCH = int(os.environ["FASTADV_BENCH_BATCH"]) if os.environ.get("FASTADV_BENCH_BATCH") else None


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    name = request.param
    batch = BATCH or attack.MODELS[name][1 if DEVICE.type == "cpu" else 2]
    return name, attack.make_case(name, batch, DEVICE)


# (AutoAttack, a cascade of minutes per call, runs from `fastadv bench --attack --attacks autoattack`)
@pytest.mark.parametrize(
    "kind, provider",
    [(kind, p) for kind in attack.KINDS if kind != "autoattack" for p in attack.available_providers(kind, DEVICE)],
)
def test_attack10(benchmark, case, kind, provider):
    name, (model, images, labels) = case
    fn = attack.provider_fn(provider, model, images, labels, attack.EPS[name], steps=10, kind=kind)
    benchmark.group = f"{kind}10 {name} batch {images.shape[0]} on {DEVICE.type}"
    benchmark.extra_info["images"] = images.shape[0]
    if DEVICE.type == "cuda":
        run = fn

        def fn():
            run()
            torch.cuda.synchronize()

    benchmark.pedantic(fn, warmup_rounds=1, rounds=5, iterations=1)
