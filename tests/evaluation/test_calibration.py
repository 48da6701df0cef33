"""Calibration error in every evaluation report: ECE and RMS calibration error over 15
equal-width bins of the maximum softmax probability equal a direct computation on random cases
(ties on bin edges included), batches add up (the sums stream and resume), and the report holds
them clean and per attack."""

import math

import numpy as np
import pytest
import torch

import fastadv
from fastadv.evaluation import calibration, format_report
from fastadv.evaluation.plots import plot_reliability


def _direct(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """ECE and RMS written out: bin b holds (b/bins, (b+1)/bins], 0 in the first."""
    ece, square, n = 0.0, 0.0, len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (b == 0 and c == 0)]
        if not members:
            continue
        gap = abs(np.mean(correct[members]) - np.mean(confidence[members]))
        ece += len(members) / n * gap
        square += len(members) / n * gap**2
    return ece, math.sqrt(square)


@pytest.mark.parametrize("seed", range(6))
def test_ece_and_rms_equal_a_direct_computation(seed):
    g = np.random.default_rng(seed)
    n = int(g.integers(1, 400))
    confidence = g.random(n)
    # ties: values on the bins' edges (k / 15 as float64, as a float32 softmax would give them)
    confidence[: n // 4] = g.integers(0, 16, n // 4) / 15
    correct = g.random(n) < confidence
    found = calibration.errors(calibration.bin_sums(torch.from_numpy(confidence), torch.from_numpy(correct)))
    ece, rms = _direct(confidence, correct)
    assert found["ece"] == pytest.approx(ece, abs=1e-12)
    assert found["rms_calibration_error"] == pytest.approx(rms, abs=1e-12)


def test_bin_sums_add_up_over_batches():
    g = torch.Generator().manual_seed(0)
    confidence, correct = torch.rand(1000, generator=g), torch.rand(1000, generator=g) < 0.5
    whole = calibration.bin_sums(confidence, correct)
    parts = sum(calibration.bin_sums(c, k) for c, k in zip(confidence.split(37), correct.split(37), strict=True))
    assert torch.allclose(whole, parts, rtol=0, atol=1e-9)
    assert calibration.errors(torch.zeros(3, 15)) == {"ece": None, "rms_calibration_error": None}


def test_the_report_holds_calibration_clean_and_under_attack(digits_model, tmp_path):
    model, x, y = digits_model
    x, y = x[:150], y[:150]
    report = fastadv.evaluate(model, (x, y), attacks=["fgsm", "pgd"], eps=[0.0, 0.1], steps=5, batch_size=64,
                              progress=False)  # fmt: skip
    with torch.no_grad():
        logits = model(x)
    confidence = torch.softmax(logits, 1).max(1).values.double().numpy()
    ece, rms = _direct(confidence, (logits.argmax(1) == y).numpy())
    clean = report["calibration"]["clean"]
    assert clean["ece"] == pytest.approx(ece, abs=1e-6)
    assert clean["rms_calibration_error"] == pytest.approx(rms, abs=1e-6)
    assert sum(clean["reliability"]["count"]) == 150
    rows = {(r["eps"], r["attack"]): r for r in report["attacks"]}
    assert rows[0.0, "pgd"]["ece"] == pytest.approx(ece, abs=1e-6)  # eps 0: nothing attacked
    # under attack the model is wrong and confident: far worse calibrated than clean
    assert rows[0.1, "pgd"]["ece"] > clean["ece"] + 0.2
    assert "calibration error, ECE/RMS (15 bins" in format_report(report)
    plot_reliability(report, str(tmp_path / "reliability.png"))
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    # batches add up: another batch size gives the same sums (FGSM's: PGD's random starts are seeded per batch)
    again = fastadv.evaluate(model, (x, y), attacks=["fgsm", "pgd"], eps=[0.0, 0.1], steps=5, batch_size=150,
                             progress=False)  # fmt: skip
    assert again["calibration"]["clean"]["ece"] == pytest.approx(clean["ece"], abs=1e-9)
    for first, second in zip(report["attacks"], again["attacks"], strict=True):
        if first["attack"] == "fgsm":
            assert first["reliability"]["count"] == second["reliability"]["count"]
            assert first["ece"] == pytest.approx(second["ece"], abs=1e-9)
