"""Calibration error of a classifier's confidence: expected calibration error (ECE) and RMS
calibration error over 15 equal-width bins of the maximum softmax probability (Guo et al. 2017;
the RMS error as in Hendrycks et al., "Natural Adversarial Examples"), clean and under attack.

Everything is kept as per-bin sums (count, confidence sum, correct count: `bin_sums`), so batches
add up, an evaluation resumes with identical numbers and torch.distributed ranks reduce with one
all-reduce, as the rest of an evaluation's report (fastadv.evaluate's _Sums)."""

from __future__ import annotations

import math

import torch

from ..attacks.result import confidence_of as attack_confidence

BINS = 15


def bin_sums(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """float64 [3, bins] on the CPU: per bin, the samples, their confidence sum and how many are
    correct. Bin b holds confidences in (b / bins, (b + 1) / bins]; a confidence of 0 falls in
    the first. confidence: float [N] in [0, 1]; correct: bool [N]."""
    confidence = confidence.detach().double().cpu().flatten()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    out = torch.zeros(3, bins, dtype=torch.float64)
    out[0].index_add_(0, index, torch.ones_like(confidence))
    out[1].index_add_(0, index, confidence)
    out[2].index_add_(0, index, correct.detach().cpu().flatten().double())
    return out


def confidence_of(logits: torch.Tensor, predicted: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [N]: the softmax probability of `predicted` (default: the top class), computed as
    the attacks compute `AttackResult.confidence`."""
    if predicted is None:
        return torch.softmax(logits.detach().float(), dim=1).max(1).values
    return attack_confidence(logits, predicted.to(logits.device))


def errors(sums: torch.Tensor) -> dict:
    """{"ece", "rms_calibration_error"} from `bin_sums` (None where there is no sample): the bins'
    |accuracy - confidence| averaged with weights n_b / N, and the square root of the weighted
    mean square."""
    count, confidence, correct = sums.double()
    n = float(count.sum())
    if n == 0:
        return {"ece": None, "rms_calibration_error": None}
    gap = (correct - confidence).abs()  # n_b * |accuracy_b - confidence_b|
    ece = float(gap.sum()) / n
    rms = math.sqrt(float((gap**2 / count.clamp_min(1)).sum()) / n)
    return {"ece": ece, "rms_calibration_error": rms}


def reliability(sums: torch.Tensor) -> dict:
    """The reliability diagram's data: per bin its samples, mean confidence and accuracy (None
    for an empty bin)."""
    count, confidence, correct = sums.double()
    return {
        "bins": int(count.numel()),
        "count": [int(c) for c in count],
        "confidence": [float(s / c) if c else None for s, c in zip(confidence, count, strict=True)],
        "accuracy": [float(k / c) if c else None for k, c in zip(correct, count, strict=True)],
    }


def add_to_report(report: dict, clean: torch.Tensor, attacked: torch.Tensor) -> None:
    """Adds the calibration errors to an evaluation's report: "calibration" (clean: ECE, RMS and
    the reliability data) and per attack row "ece" and "rms_calibration_error" (of the
    adversarial predictions' confidences: with the cascade, of each sample's image that counts
    after this attack). clean: [3, bins]; attacked: [n_eps, n_attacks, 3, bins]."""
    report["calibration"] = {"bins": int(clean.shape[-1]), "confidence": "maximum softmax probability",
                             "clean": {**errors(clean), "reliability": reliability(clean)}}  # fmt: skip
    flat = attacked.reshape(-1, *attacked.shape[-2:])
    for row, sums in zip(report["attacks"], flat, strict=True):
        row.update(errors(sums))
        row["reliability"] = reliability(sums)


def format_line(report: dict) -> str | None:
    """The report's calibration as one printed line (None for a report without it)."""
    calibration = report.get("calibration")
    if not calibration:
        return None

    def pair(ece, rms) -> str:
        return "—" if ece is None else f"{100 * ece:.2f}%/{100 * rms:.2f}%"

    parts = [f"clean {pair(calibration['clean']['ece'], calibration['clean']['rms_calibration_error'])}"]
    parts += [f"{r['attack']} at eps {r['eps']:.4g} {pair(r.get('ece'), r.get('rms_calibration_error'))}"
              for r in report["attacks"] if "ece" in r]  # fmt: skip
    return f"calibration error, ECE/RMS ({calibration['bins']} bins of max softmax): " + ", ".join(parts)
