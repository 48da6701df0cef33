"""PNG plots (matplotlib, drawn off-screen with the Agg backend): an evaluation's robustness curves,
examples, defences and reliability diagram (its calibration), and an OOD detection report's
score histograms and ROC curves."""

from __future__ import annotations

import numpy as np

from .examples import Examples


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plots need matplotlib (pip install matplotlib)") from error
    return plt


def _curve(ax, report: dict, rows: list[dict], *args, **kwargs) -> None:
    ax.plot([0] + [r["eps"] for r in rows], [report["clean_accuracy"]] + [r["robust_accuracy"] for r in rows],
            *args, **kwargs)  # fmt: skip


def plot_robustness(report: dict, path: str) -> None:
    """Robust accuracy against eps. A plain report: one line per attack (with the cascade, after
    it and the attacks before it) and the worst case. A report of `fastadv eval --defense ...`
    (with "defenses"): the worst case of the undefended model and of each defence, each beside
    its adaptive attacks' worst case when the run was adaptive. An adaptive report alone: the
    attacks, the worst case and the adaptive attacks' worst case. Every line is labelled with the
    model it is of."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if "defenses" in report:
        for k, run in enumerate(report["defenses"]):
            name = "undefended" if run["defense"] == "none" else run["defense"]
            color = f"C{k}"
            _curve(ax, run, run["worst_case"], marker="o", color=color, label=f"{name}: worst case")
            if "adaptive" in run:
                _curve(ax, run, run["adaptive"]["worst_case"], "--", marker="x", color=color,
                       label=f"{name}: adaptive worst case")  # fmt: skip
        title = f"undefended and defended models ({report['samples']} samples)"
    else:
        for name in report["settings"]["attacks"]:
            _curve(ax, report, [r for r in report["attacks"] if r["attack"] == name], marker="o", label=name)
        _curve(ax, report, report["worst_case"], "k--", label="worst case")
        if "adaptive" in report:
            _curve(ax, report, report["adaptive"]["worst_case"], "r:", marker="x", label="adaptive worst case")
        title = f"robust accuracy ({report['samples']} samples)"
    ax.set_xlabel("eps")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_examples(examples: Examples, path: str) -> None:
    """A grid of the samples an evaluation kept (`evaluate(..., examples=N)`'s
    ``report["examples"]``): clean images, the adversarial images that count (the attack that
    fooled each named; beyond the budget a minimal-norm attack's sample keeps its clean image, as
    the report counts it) and the perturbations (amplified to the full range), with the model's
    predictions. Nothing is attacked again: the images are those the evaluation computed."""
    plt = _pyplot()
    x, y, adv = examples.images, examples.labels, examples.adversarial
    clean_pred, adv_pred = examples.clean_pred, examples.adversarial_pred
    delta = (adv - x).float()
    scale = delta.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    amplified = 0.5 + 0.5 * delta / scale
    n = x.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.3 * max(n, 2), 4.2), squeeze=False)
    for i in range(n):
        by = examples.fooled_by[i]
        titles = (f"y={int(y[i])} p={int(clean_pred[i])}", f"{by or 'adv'} p={int(adv_pred[i])}", "delta")
        for row, (tensor, title) in enumerate(zip((x, adv, amplified), titles, strict=True)):
            img = tensor[i].detach().float().cpu()
            img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
            ax = axes[row][i]
            ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7, color="red" if row == 1 and by is not None else "black")
            ax.axis("off")
    fig.suptitle(f"eps {examples.eps:g}: clean, adversarial (red: fooled, by the attack named), perturbation",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_defenses(rows: list[dict], path: str) -> None:
    """Bars per defence and eps (rows of fastadv.defenses.compare, with "defense" when several):
    clean accuracy, robust accuracy under the non-adaptive attacks and under the adaptive ones;
    a group where gradient masking is suspected is labelled so."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(rows) + 1.5), 4))
    series = (("clean", "clean_accuracy", "#999999"), ("non-adaptive", "robust_accuracy", "#4c72b0"),
              ("adaptive", "adaptive_robust_accuracy", "#c44e52"))  # fmt: skip
    width = 0.8 / len(series)
    for k, (label, key, color) in enumerate(series):
        xs = [i + (k - 1) * width for i, r in enumerate(rows) if r[key] is not None]
        ys = [r[key] for r in rows if r[key] is not None]
        if ys:
            ax.bar(xs, ys, width, label=label, color=color)
    for i, r in enumerate(rows):
        if r["gradient_masking_suspected"]:
            ax.text(i, 1.02, "masking?", ha="center", fontsize=7, color="#c44e52")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r.get('defense', '')}\neps {r['eps']:g}".strip() for r in rows], fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.1)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(series), frameon=False)
    ax.set_title("defences: non-adaptive vs adaptive attacks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
