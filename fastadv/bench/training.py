"""Adversarial-training throughput: training images/s of FGSM-RS and PGD-AT epochs, fastadv
against the loop people write, same model, data and optimizer, in one run.

Each provider trains its own copy of the model for `batches` batches (one "epoch" here) per
timed call, with SGD (momentum 0.9, lr 0.01). The attack runs in eval mode and the update in
train mode for every provider.

Providers:
- naive: the attack with loss.backward() (so weight gradients too), eager sign step, projection
  and clamp; then the training step.
- fastadv: fastadv.PGD / fastadv.FGSM built once (float32), then the same training step.
- fastadv-bf16-cl: bfloat16 autocast for the attack and the training forward, channels_last.
- fastadv-bf16-cl-graph: as above with the attack's step in a CUDA graph (GPU only).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..attacks import FGSM, PGD
from .attack import EPS, MODELS, make_case, naive_pgd
from .results import Row, environment, medians_by_case
from .timing import measure, quantiles

RECIPES = ("fgsm-rs", "pgd")
PROVIDERS = ("naive", "fastadv", "fastadv-bf16-cl", "fastadv-bf16-cl-graph")


def available_providers(device: torch.device) -> list[str]:
    return [p for p in PROVIDERS if device.type == "cuda" or not p.endswith("graph")]


def naive_fgsm_rs(model, images, labels, eps: float, alpha: float) -> torch.Tensor:
    adv = (images + torch.empty_like(images).uniform_(-eps, eps)).clamp(0, 1).requires_grad_(True)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(adv), labels).backward()
    adv = adv.detach() + alpha * adv.grad.sign()
    return torch.min(torch.max(adv, images - eps), images + eps).clamp(0, 1)


def epoch_fn(provider: str, recipe: str, model, batches, eps: float, steps: int) -> Callable[[], None]:
    """One epoch of `recipe` training on `batches` [(images, labels), ...] with `provider`."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bf16 = "bf16-cl" in provider
    if bf16 and batches[0][0].dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    alpha = 1.25 * eps if recipe == "fgsm-rs" else eps / 4
    if provider == "naive":

        def attack(x, y):
            if recipe == "fgsm-rs":
                return naive_fgsm_rs(model, x, y, eps, alpha)
            return naive_pgd(model, x, y, eps, alpha, steps)
    else:
        options = {"amp": torch.bfloat16, "channels_last": batches[0][0].dim() == 4} if bf16 else {}
        if recipe == "fgsm-rs":
            attack = FGSM(model, eps=eps, alpha=alpha, random_start=True, **options)
        else:
            attack = PGD(model, eps=eps, alpha=alpha, steps=steps, cuda_graph=provider.endswith("graph"), **options)

    def epoch() -> None:
        for x, y in batches:
            model.eval()
            adv = attack(x, y)
            model.train()
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(adv).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def run(
    models: Iterable[str],
    recipes: Iterable[str],
    providers: Iterable[str],
    device: torch.device,
    *,
    batch: int | None = None,
    batches: int = 4,
    steps: int = 10,
    warmup: int = 1,
    repeat: int = 3,
    progress: bool = True,
) -> list[Row]:
    """ms per epoch, training images/s and the speed-up over naive, per model and recipe."""
    from tqdm import tqdm

    models, recipes, providers = list(models), list(recipes), list(providers)
    env = environment(device)
    rows: list[Row] = []
    bar = tqdm(total=len(models) * len(recipes), desc="bench train", disable=not progress, unit="case")
    for name in models:
        size = batch or MODELS[name][1 if device.type == "cpu" else 2]
        model, images, labels = make_case(name, size * batches, device)
        data = [(images[i : i + size], labels[i : i + size]) for i in range(0, size * batches, size)]
        for recipe in recipes:
            fns = {p: epoch_fn(p, recipe, model, data, EPS[name], steps) for p in providers}
            for fn in fns.values():
                measure(fn, device, warmup, 1)
            samples: dict[str, list[float]] = {p: [] for p in providers}
            for _ in range(repeat):  # providers take turns (a slow spell hits them alike)
                for provider, fn in fns.items():
                    samples[provider] += measure(fn, device, 0, 1)
            seconds = {p: quantiles(s) for p, s in samples.items()}
            kernel = f"train-{recipe}" + (f"{steps}" if recipe == "pgd" else "")
            for provider, (med, p20, p80) in seconds.items():
                dtype = "bf16-cl" if "bf16-cl" in provider else "float32"
                common = {**env, "kernel": kernel, "provider": provider, "dtype": dtype, "size": name,
                          "numel": size * batches}  # fmt: skip
                n = size * batches
                rows.append(Row(**common, metric="time", unit="ms", median=med * 1e3, p20=p20 * 1e3, p80=p80 * 1e3))
                rows.append(Row(**common, metric="images_per_s", unit="img/s", median=n / med, p20=n / p80,
                                p80=n / p20))  # fmt: skip
                if "naive" in seconds and provider != "naive":
                    ratio = seconds["naive"][0] / med
                    rows.append(Row(**common, metric="speedup_vs_naive", unit="x", median=ratio, p20=ratio, p80=ratio))
            bar.update()
    bar.close()
    return rows


def format_table(rows: list[Row]) -> str:
    by_key = medians_by_case(rows)
    lines = [
        f"{'recipe':>14} {'model':>18} {'images':>7} {'provider':>22} {'ms/epoch':>10} {'img/s':>9} {'vs naive':>9}"
    ]
    for (kernel, model, n, provider), m in by_key.items():
        ratio = f"{m['speedup_vs_naive']:.2f}x" if "speedup_vs_naive" in m else "-"
        lines.append(f"{kernel:>14} {model:>18} {n:>7} {provider:>22} {m['time']:>10.1f} {m['images_per_s']:>9.1f} "
                     f"{ratio:>9}")  # fmt: skip
    return "\n".join(lines)
