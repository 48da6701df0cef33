"""Out-of-distribution detection, scored as Hendrycks et al. score ImageNet-O ("Natural
Adversarial Examples"): an in-distribution data set, an out-of-distribution (OOD) one, and a
score per image that is higher for in-distribution images — the maximum softmax probability
(MSP), the maximum logit, the negative energy (logsumexp of the logits). OOD is the positive
class; an image's anomaly score is minus its score. The metrics are plain functions over scores:

- AUROC: the probability that an OOD image is more anomalous than an in-distribution one (ties
  count one half): scikit-learn's roc_auc_score.
- AUPR: the average precision of flagging OOD images (scikit-learn's average_precision_score);
  a detector at chance scores the OOD share.
- FPR95: the share of in-distribution images flagged when the threshold flags 95% of the OOD
  images (the lowest such share over thresholds).

Optionally under attack (the adversarial OOD setting): an L-inf PGD moves each OOD image within
eps to raise the score being measured (look in-distribution), one attack per score, and the
metrics are computed again with the attacked OOD images. Both data sets are streamed; only the
scores (one float per image and score) are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import checks as check
from ..attacks.model_mode import attack_mode
from ..data import BatchStream, as_selection
from ..data import class_space as class_spaces
from ..data.loader import first_images, workers_for
from ..ops import linf_step

SCORES = ("msp", "max_logit", "energy")
TPR_LEVEL = 0.95


def score(logits: torch.Tensor, name: str) -> torch.Tensor:
    """float32 [N]: the in-distribution score `name` (SCORES) of each row of logits."""
    logits = logits.float()
    if name == "msp":
        return torch.softmax(logits, dim=1).max(1).values
    if name == "max_logit":
        return logits.max(1).values
    if name == "energy":  # minus the energy, T = 1 (Liu et al. 2020)
        return torch.logsumexp(logits, dim=1)
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {name!r}")


def _counts(in_scores: np.ndarray, out_scores: np.ndarray):
    """Per distinct anomaly threshold, from the most anomalous down: OOD (tp) and in-distribution
    (fp) images at or above it."""
    anomaly = -np.concatenate([np.asarray(out_scores, np.float64), np.asarray(in_scores, np.float64)])
    is_out = np.concatenate([np.ones(len(out_scores)), np.zeros(len(in_scores))])
    order = np.argsort(-anomaly, kind="stable")
    anomaly, is_out = anomaly[order], is_out[order]
    last = np.r_[np.flatnonzero(np.diff(anomaly)), anomaly.size - 1]  # the last index of each distinct value
    tp = np.cumsum(is_out)[last]
    fp = (last + 1) - tp
    return tp, fp


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve of flagging OOD images (ties: half)."""
    tp, fp = _counts(in_scores, out_scores)
    tpr, fpr = np.r_[0, tp] / tp[-1], np.r_[0, fp] / fp[-1]
    return float(np.trapezoid(tpr, fpr))


def aupr(in_scores, out_scores) -> float:
    """Average precision of flagging OOD images (OOD positive): sum over thresholds of the recall
    gained times the precision there."""
    tp, fp = _counts(in_scores, out_scores)
    precision, recall = tp / (tp + fp), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0, recall]) * precision))


def fpr_at_tpr(in_scores, out_scores, level: float = TPR_LEVEL) -> float:
    """The lowest share of in-distribution images flagged at a threshold that flags at least
    `level` of the OOD images."""
    tp, fp = _counts(in_scores, out_scores)
    reached = tp / tp[-1] >= level - 1e-12
    return float(fp[reached].min() / fp[-1])


def metrics(in_scores, out_scores) -> dict[str, float]:
    """{"auroc", "aupr", "fpr95"} of one score. Raises ValueError on an empty side."""
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError("ood: both data sets need at least one image")
    return {"auroc": auroc(in_scores, out_scores), "aupr": aupr(in_scores, out_scores),
            "fpr95": fpr_at_tpr(in_scores, out_scores)}  # fmt: skip


def attack_ood(model, images: torch.Tensor, name: str, eps: float, steps: int, alpha: float | None = None
               ) -> torch.Tensor:  # fmt: skip
    """L-inf PGD (no random start) that raises score `name` of `images` (OOD images made to look
    in-distribution), within eps of them and in [0, 1]. Gradients are taken of the images only."""
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x = images.detach().float()
    adv = x.clone()
    with attack_mode(model, "eval"), torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            gain = score(model(adv), name).sum()
            (grad,) = torch.autograd.grad(gain, adv)
            adv = linf_step(adv.detach(), grad, x, eps, alpha)
    return adv.detach()


def _batches(selection, batch_size: int, device, workers):
    n = len(selection)
    plan = [(i, range(start, min(start + batch_size, n))) for i, start in enumerate(range(0, n, batch_size))]
    return BatchStream(selection, plan, device, workers_for(selection, workers))


def _score_batch(scored, batch, side: str, scores, eps: float, steps: int, found: dict, adversarial: dict) -> None:
    """Appends one batch's scores (and, for OOD images with eps > 0, their attacked scores)."""
    logits = scored(batch.x)
    check.finite_outputs(logits, f"{side} images of batch {batch.index}")
    for s in scores:
        found[s].append(score(logits, s).double().cpu())
    if side == "out" and eps > 0:
        for s in scores:
            adversarial[s].append(score(scored(attack_ood(scored, batch.x, s, eps, steps)), s).double().cpu())


def detect_ood(
    model: torch.nn.Module,
    in_data,
    out_data,
    *,
    scores: Sequence[str] = SCORES,
    eps: float = 0.0,
    steps: int = 10,
    batch_size: int = 256,
    class_map=None,
    all_classes: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """OOD detection of `model` between `in_data` and `out_data` (each a pair of tensors, a
    Source or a Selection: see fastadv.data.open_data), per score of `scores`; with eps > 0
    also with the OOD images attacked (`attack_ood`, `steps` steps, one attack per score).

    The logits are the model's, restricted to the in-distribution data's classes when it covers
    only some of them (as `evaluate` scores such data; all_classes=True: every output; class_map:
    see fastadv.data.class_space). Returns the report: "metrics" {"clean": {score: {"auroc",
    "aupr", "fpr95"}}, "adversarial": ... (eps > 0)}, "samples", "class_space", "attack", and the
    plots' data "histograms" and "roc". The model is given back as it was."""
    scores = check.choices("scores", scores, SCORES)
    check.positive_int("steps", steps)
    check.positive_int("batch_size", batch_size)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    in_sel, out_sel = as_selection("in_data", in_data), as_selection("out_data", out_data)
    device = next(iter(model.parameters()), torch.empty(0)).device
    with attack_mode(model, "eval"), torch.no_grad():
        outputs = int(model(first_images(in_sel, 1)[0].to(device)).shape[1])
        space = class_spaces.resolve(in_sel.source.classes, in_sel.labels, outputs, class_map=class_map,
                                     all_classes=all_classes)  # fmt: skip
        scored = space.wrap(model)
        found = {"in": {s: [] for s in scores}, "out": {s: [] for s in scores}}
        adversarial = {s: [] for s in scores}
        for side, selection in (("in", in_sel), ("out", out_sel)):
            for batch in _batches(selection, batch_size, device, workers):
                if batch.y.numel():  # (its tensors are the helper's locals: gone when it returns)
                    _score_batch(scored, batch, side, scores, float(eps), steps, found[side], adversarial)
                del batch  # one batch in memory at a time
    values = {side: {s: torch.cat(v).numpy() for s, v in per.items()} for side, per in found.items()}
    report = {
        "scores": list(scores),
        "samples": {"in": len(values["in"][scores[0]]), "out": len(values["out"][scores[0]])},
        "positive": "out-of-distribution (anomaly score: minus the score)",
        "metrics": {"clean": {s: metrics(values["in"][s], values["out"][s]) for s in scores}},
        "class_space": space.describe(),
        "attack": None,
    }
    attacked = {}
    if eps > 0:
        attacked = {s: torch.cat(v).numpy() for s, v in adversarial.items()}
        report["metrics"]["adversarial"] = {s: metrics(values["in"][s], attacked[s]) for s in scores}
        report["attack"] = {"name": "pgd", "norm": "Linf", "eps": float(eps), "steps": steps,
                            "alpha": 2.5 * float(eps) / steps, "random_start": False,
                            "goal": "raise each score of the OOD images (one attack per score)"}  # fmt: skip
    report["histograms"], report["roc"] = _plot_data(values, attacked, scores)
    return report


def _plot_data(values: dict, attacked: dict, scores) -> tuple[dict, dict]:
    """Histograms (40 bins over the scores' range) and ROC curves (at most 200 points) per score."""
    histograms, roc = {}, {"clean": {}}
    for s in scores:
        parts = {"in": values["in"][s], "out": values["out"][s]}
        if s in attacked:
            parts["out_adversarial"] = attacked[s]
        everything = np.concatenate(list(parts.values()))
        edges = np.linspace(everything.min(), everything.max() + 1e-12, 41)
        histograms[s] = {"edges": edges.tolist(), **{k: np.histogram(v, edges)[0].tolist() for k, v in parts.items()}}
        for key, out in (("clean", parts["out"]), ("adversarial", parts.get("out_adversarial"))):
            if out is None:
                continue
            tp, fp = _counts(parts["in"], out)
            tpr, fpr = np.r_[0, tp] / tp[-1], np.r_[0, fp] / fp[-1]
            keep = np.unique(np.linspace(0, len(tpr) - 1, min(200, len(tpr))).astype(int))
            roc.setdefault(key, {})[s] = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
    return histograms, roc


def format_ood_report(report: dict) -> str:
    """The report as printed: one line per score, clean and (if run) under attack."""
    lines = [f"OOD detection: {report['samples']['in']} in-distribution and {report['samples']['out']} OOD images "
             "(OOD positive; AUROC, AUPR higher is better, FPR95 lower)"]  # fmt: skip
    summary = class_spaces.summary(report.get("class_space"))
    if summary:
        lines.append(summary)
    lines.append(f"{'score':>10} {'setting':>12} {'AUROC':>8} {'AUPR':>8} {'FPR95':>8}")
    for setting, per in report["metrics"].items():
        for s, m in per.items():
            lines.append(f"{s:>10} {setting:>12} {100 * m['auroc']:>7.2f}% {100 * m['aupr']:>7.2f}% "
                         f"{100 * m['fpr95']:>7.2f}%")  # fmt: skip
    if report.get("attack"):
        a = report["attack"]
        lines.append(f"adversarial: L-inf PGD on the OOD images, eps {a['eps']:g}, {a['steps']} steps, "
                     "raising each score")  # fmt: skip
    return "\n".join(lines)
