"""An evaluation's report: built from its sums, printed as a table, written as strict JSON, and
read back (robust accuracy per eps)."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import torch

from .._environment import device_name
from .._version import __version__
from ..attacks.catalog import ATTACKS
from ..data import class_space as class_spaces
from ..ops import resolve_backend
from . import calibration


def macro_scores(cm: torch.Tensor) -> tuple[float, float, float]:
    """Macro precision, recall and F1 from a [K, K] confusion matrix (rows: true labels); classes
    with no prediction (or no sample) count as 0 for precision (recall)."""
    tp = cm.diag()
    precision = torch.where(cm.sum(0) > 0, tp / cm.sum(0).clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(cm.sum(1) > 0, tp / cm.sum(1).clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0 * tp)
    present = cm.sum(1) > 0
    return tuple(float(v[present].mean()) for v in (precision, recall, f1))  # type: ignore[return-value]


def build_report(t: dict[str, torch.Tensor], attacks: list[str], eps: list[float], settings: dict,
                 device: torch.device, backend: str, seed: int, used: dict) -> dict:  # fmt: skip
    """The report (a JSON-ready dict) from an evaluation's sums `t` (see Sums), its `settings`, the
    device it ran on, the backend asked for (recorded as resolved there) and `used`, every
    (eps index, attack index)'s settings as built."""
    n = float(t["clean"].sum())
    correct = float(t["clean"].diag().sum())
    rows, worst = [], []
    for e_index, e in enumerate(eps):
        for a_index, name in enumerate(attacks):
            cm = t["cm"][e_index, a_index]
            attacked = float(t["attacked"][e_index, a_index])
            own = float(t["own_fooled"][e_index, a_index])
            seconds = float(t["seconds"][e_index, a_index])
            precision, recall, f1 = macro_scores(cm)
            rows.append({
                "attack": name, "norm": ATTACKS[name].norm, "eps": e,
                # with the cascade: after this attack and every earlier one at this eps
                "cumulative": bool(settings["cascade"]),
                "robust_accuracy": float(cm.diag().sum()) / max(n, 1),
                "success_rate": float(t["fooled"][e_index, a_index]) / max(correct, 1),
                "precision": precision, "recall": recall, "f1": f1,
                # this attack alone: the samples it attacked, those it fooled, and its numbers over them
                "samples_attacked": int(attacked),
                "samples_fooled": int(own),
                "own_success_rate": own / attacked if attacked else None,
                "mean_linf": float(t["linf"][e_index, a_index]) / own if own else None,
                "mean_l2": float(t["l2"][e_index, a_index]) / own if own else None,
                "non_finite": int(t["non_finite"][e_index, a_index]),
                "images_per_s": attacked / seconds if attacked and seconds > 0 else None,
                "settings": used[e_index, a_index],
            })  # fmt: skip
        worst_cm = t["worst"][e_index]
        worst.append({"eps": e, "robust_accuracy": float(worst_cm.diag().sum()) / max(n, 1),
                      "f1": macro_scores(worst_cm)[2]})  # fmt: skip
    return {
        "fastadv": __version__,
        "torch": torch.__version__,
        "device": device_name(torch.device(device)),
        "backend": resolve_backend(backend, device),
        "seed": seed,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "samples": int(n),
        "clean_accuracy": correct / max(n, 1),
        "attacks": rows,
        "worst_case": worst,
    }


def format_classes(classes: dict[str, int] | None, shown: int = 12) -> str | None:
    """The class -> label map as one line ("classes: blue=0, green=1, red=2"), the first `shown`
    of a long one (all of them are in the report), or None when the data names no classes."""
    if not classes:
        return None
    items = [f"{name}={index}" for name, index in sorted(classes.items(), key=lambda item: item[1])]
    more = f", ... ({len(items)} classes, all in report.json)" if len(items) > shown else ""
    return f"classes (label = index): {', '.join(items[:shown])}{more}"


def _number(value: float | None, spec: str, width: int) -> str:
    """`value` formatted, or a dash where it is undefined (an attack that attacked or fooled nothing)."""
    return f"{'—' if value is None else format(value, spec):>{width}}"


def format_report(report: dict) -> str:
    """The report as a printed table: one line per (eps, attack), then the worst case per eps.

    Columns: "robust", "success" and "F1" are after this attack, and with the cascade (the
    default) after every attack above it at the same eps too: robust accuracy over all samples,
    the share of correctly classified samples fooled so far, macro F1. "attacked", "fooled",
    the mean norms and img/s are this attack's alone: the samples it ran on, those it fooled,
    the mean L-inf and L2 norm of the perturbations that fooled (over "fooled" samples), and its
    throughput on the samples it attacked; "—" where it attacked (or fooled) nothing."""
    cumulative = any(r.get("cumulative", True) for r in report["attacks"])
    header = (("eps", 8), ("attack", 10), ("robust", 8), ("success", 8), ("F1", 6), ("attacked", 8), ("fooled", 7),
              ("mean Linf", 10), ("mean L2", 8), ("img/s", 9))  # fmt: skip
    lines = [
        # fastadv eval --defense: this table is the bare model's; the defences' follow in the comparison
        *(["undefended model (the defended models: the comparison below)"] if "defenses" in report else []),
        f"clean accuracy {100 * report['clean_accuracy']:.2f}% on {report['samples']} samples "
        f"({report['device']}, backend {report['backend']})",
        " ".join(f"{h:>{w}}" for h, w in header),
    ]
    for r in report["attacks"]:
        lines.append(
            f"{r['eps']:>8.4g} {r['attack']:>10} {100 * r['robust_accuracy']:>7.2f}% {100 * r['success_rate']:>7.2f}% "
            f"{r['f1']:>6.3f} {r['samples_attacked']:>8} {r.get('samples_fooled', 0):>7} "
            f"{_number(r['mean_linf'], '.4f', 10)} {_number(r['mean_l2'], '.4f', 8)} "
            f"{_number(r['images_per_s'], '.1f' if (r['images_per_s'] or 0) >= 1 else '.2g', 9)}"
        )
    lines.append(
        ("robust, success, F1: after this attack and the ones above it at the same eps (cascade); "
         if cumulative else "robust, success, F1: this attack alone (no cascade); ")
        + "attacked, fooled, img/s: this attack's own; mean Linf/L2: over the samples it fooled"
    )  # fmt: skip
    bad = [f"{r['attack']} at eps {r['eps']:.4g}: {r['non_finite']}" for r in report["attacks"] if r.get("non_finite")]
    if bad:
        lines.append(f"non-finite adversarial images (counted as not fooled): {', '.join(bad)}")
    if report.get("skipped_images"):
        lines.append(f"unreadable images left out: {len(report['skipped_images'])} (listed in the report)")
    worst = ", ".join(f"eps {w['eps']:.4g}: {100 * w['robust_accuracy']:.2f}%" for w in report["worst_case"])
    lines.append(f"worst case over attacks (robust accuracy): {worst}")
    classes = format_classes(report.get("classes"))
    if classes:
        lines.insert(2 if "defenses" in report else 1, classes)
    calibrated = calibration.format_line(report)
    if calibrated:
        lines.append(calibrated)
    space = class_spaces.summary(report.get("class_space"))  # how labels became the model's outputs
    if space:
        lines.insert(2 if "defenses" in report else 1, space)
    return "\n".join(lines)


def robust_accuracy(report: dict, attack: str | None = None) -> dict[float, float]:
    """{eps: robust accuracy} for one attack's row (cumulative under cascade), or the worst case."""
    if attack is None:
        return {w["eps"]: w["robust_accuracy"] for w in report["worst_case"]}
    return {r["eps"]: r["robust_accuracy"] for r in report["attacks"] if r["attack"] == attack}


def write_json(path: str, obj: Any) -> None:
    """Strict JSON: undefined numbers (NaN, infinities) are written as null."""

    def strict(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [strict(v) for v in value]
        return value

    with open(path, "w") as f:
        json.dump(strict(obj), f, indent=2, allow_nan=False)
