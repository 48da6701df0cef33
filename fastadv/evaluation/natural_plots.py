"""PNG figures of issue 28's numbers (matplotlib, off-screen with Agg): the reliability diagram
of an evaluation's calibration, and an OOD detection report's score histograms and ROC curves."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(report: dict, path: str) -> None:
    """Accuracy against confidence per bin (the reliability diagram), clean and for the worst
    attack row at the largest eps, with the diagonal of perfect calibration and each ECE."""
    plt = _pyplot()
    bins = report["calibration"]["bins"]
    centres = (np.arange(bins) + 0.5) / bins
    curves = [("clean", report["calibration"]["clean"]["reliability"], report["calibration"]["clean"]["ece"])]
    largest = max((r["eps"] for r in report["attacks"]), default=None)
    rows = [r for r in report["attacks"] if r["eps"] == largest and r.get("reliability")]
    if rows and largest:
        row = rows[-1]  # with the cascade, after every attack at that eps
        curves.append((f"{row['attack']} at eps {row['eps']:.4g}", row["reliability"], row["ece"]))
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4), squeeze=False)
    for ax, (name, data, ece) in zip(axes[0], curves, strict=True):
        accuracy = [np.nan if a is None else a for a in data["accuracy"]]
        ax.bar(centres, accuracy, width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max softmax)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {'—' if ece is None else f'{100 * ece:.1f}%'}")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ood(report: dict, path: str) -> None:
    """Per score: the in- and out-of-distribution score histograms (clean, and under attack when
    the report has it) and the ROC curves. Needs the report's "histograms" and "roc"."""
    plt = _pyplot()
    scores = list(report["scores"])
    fig, axes = plt.subplots(2, len(scores), figsize=(4.2 * len(scores), 7), squeeze=False)
    for k, name in enumerate(scores):
        hist = report["histograms"][name]
        edges = np.asarray(hist["edges"])
        width = np.diff(edges)
        ax = axes[0][k]
        for key, label, style in (("in", "in-distribution", {"alpha": 0.6}), ("out", "OOD", {"alpha": 0.6}),
                                  ("out_adversarial", "OOD under attack", {"alpha": 0.4})):  # fmt: skip
            if key in hist:
                counts = np.asarray(hist[key], dtype=float)
                ax.bar(edges[:-1], counts / max(counts.sum(), 1), width=width, align="edge", label=label, **style)
        ax.set_title(f"{name} (higher: more in-distribution)")
        ax.legend(fontsize=8)
        ax = axes[1][k]
        for key, label in (("clean", "clean"), ("adversarial", "OOD under attack")):
            roc = report["roc"].get(key, {}).get(name)
            if roc:
                auroc = report["metrics"][key][name]["auroc"]
                ax.plot(roc["fpr"], roc["tpr"], label=f"{label}: AUROC {100 * auroc:.1f}%")
        ax.plot([0, 1], [0, 1], "k:")
        ax.set_xlabel("false positive rate (in-distribution flagged)")
        ax.set_ylabel("true positive rate (OOD flagged)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
