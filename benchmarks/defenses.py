"""The defences table of README.md and docs/defenses.md, measured on the digits test split at
eps 0.1 with PGD-20 (alpha = eps / 4): for each defence, clean accuracy and robust accuracy under
the non-adaptive attack and under the adaptive ones, side by side; then an ensemble of three
independently trained digits CNNs attacked white-box, by transfer from one member, and each member
alone. Trained models are cached in --cache (delete it to retrain).

    python benchmarks/defenses.py [--out benchmarks/results/defenses.md] [--eot-samples 10]

(from the repository root). It takes minutes on a CPU: five small CNNs are trained (the digits
model, a distillation teacher and student at T = 100, three ensemble members) and each defence
is attacked twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import fastadv
from fastadv import models
from fastadv.data import digits
from fastadv.defenses import JPEG, BitDepth, Defended, Ensemble, MedianFilter, RandomResizePad
from fastadv.digits_models import standard_digits_model, train_standard
from fastadv.evaluation import evaluate
from fastadv.recipes import Recipe
from fastadv.train import fit

EPS, STEPS, TEMPERATURE = 0.1, 20, 100.0
DISTILL = {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0,
           "schedule": "constant"}  # fmt: skip


def cached(path: str, train) -> torch.nn.Module:
    if os.path.exists(path):
        return models.load(path)
    model = train()
    models.save(model, path)
    return model


def distilled(cache: str) -> torch.nn.Module:
    """Papernot et al.'s procedure at T = 100: a teacher on the labels at T, a student on its
    soft labels at T, both deployed at T = 1."""
    train = digits("train")

    def teacher():
        torch.manual_seed(10)
        model = models.small_cnn()
        fit(model, train, recipe=Recipe("distill", temperature=TEMPERATURE), progress=False, **DISTILL)
        return model

    t = cached(os.path.join(cache, "distill-teacher.pt"), teacher)

    def student():
        torch.manual_seed(11)
        model = models.small_cnn()
        fit(model, train, recipe=Recipe("distill", temperature=TEMPERATURE, teacher=t), progress=False, **DISTILL)
        return model

    return cached(os.path.join(cache, "distill-student.pt"), student)


def member(cache: str, seed: int) -> torch.nn.Module:
    def train():
        torch.manual_seed(seed)
        return train_standard(models.small_cnn(), *digits("train"), epochs=15, seed=seed)

    return cached(os.path.join(cache, f"member-{seed}.pt"), train)


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def pgd_robust(model, images, labels, source=None) -> float:
    """Robust accuracy of `model` under PGD-20 made on `source` (default: the model itself)."""
    attack = fastadv.PGD(source or model, eps=EPS, alpha=EPS / 4, steps=STEPS,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    adv = attack(images, labels)
    with torch.no_grad():
        return float((model(adv).argmax(1) == labels).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/defenses.md")
    parser.add_argument("--cache", default=".pytest_cache/fastadv/defenses-bench")
    parser.add_argument("--eot-samples", type=int, default=10)
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    start = time.perf_counter()
    images, labels = digits("test")
    base = cached(os.path.join(args.cache, "digits.pt"), standard_digits_model)
    student = distilled(args.cache)
    defended = [
        ("none (the digits CNN)", base),
        (f"distillation, T = {TEMPERATURE:g}", student),
        ("BitDepth(5)", Defended(base, [BitDepth(5)])),
        ("JPEG(75)", Defended(base, [JPEG(75)])),
        ("JPEG(75) + BitDepth(5)", Defended(base, [JPEG(75), BitDepth(5)])),
        ("MedianFilter(3)", Defended(base, [MedianFilter(3)])),
        ("RandomResizePad(0.9)", Defended(base, [RandomResizePad(0.9, generator=torch.Generator().manual_seed(0))])),
    ]
    lines = [
        f"Digits test split ({labels.numel()} images), L-inf eps {EPS}, PGD-{STEPS} (alpha eps/4). Adaptive: BPDA "
        f"through the transforms, EOT over {args.eot_samples} draws for RandomResizePad, margin-loss PGD added.",
        "",
        "| defence | clean | PGD (non-adaptive) | adaptive | gap (points) | flag |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, model in defended:
        report = evaluate(model, (images, labels), ["pgd"], [EPS], steps=STEPS, adaptive=True,
                          eot_samples=args.eot_samples, progress=False)  # fmt: skip
        row = report["comparison"][0]
        flag = "gradient masking suspected" if row["gradient_masking_suspected"] else ""
        lines.append(f"| {name} | {pct(row['clean_accuracy'])} | {pct(row['robust_accuracy'])} | "
                     f"{pct(row['adaptive_robust_accuracy'])} | {100 * row['gap']:.1f} | {flag} |")  # fmt: skip
        print(lines[-1], flush=True)
    members = [member(args.cache, seed) for seed in (1, 2, 3)]
    ensemble = Ensemble(members)
    with torch.no_grad():
        clean = float((ensemble(images).argmax(1) == labels).float().mean())
    lines += [
        "",
        "| ensemble of three digits CNNs (mean logits) | clean | robust under PGD |",
        "| --- | --- | --- |",
        f"| white-box PGD on the ensemble | {pct(clean)} | {pct(pgd_robust(ensemble, images, labels))} |",
        f"| transfer: PGD on member 1, evaluated on the ensemble | {pct(clean)} | "
        f"{pct(pgd_robust(ensemble, images, labels, source=members[0]))} |",
    ]
    for index, m in enumerate(members, 1):
        with torch.no_grad():
            acc = float((m(images).argmax(1) == labels).float().mean())
        lines.append(f"| member {index} alone, white-box PGD | {pct(acc)} | {pct(pgd_robust(m, images, labels))} |")
    lines += ["", f"fastadv {fastadv.__version__}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
