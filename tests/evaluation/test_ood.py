"""Out-of-distribution detection: AUROC and AUPR equal scikit-learn's on random scores
with ties, FPR95 equals a direct computation, the adversarial OOD attack lowers AUROC of the
digits model against noise images, the model is given back as it was, and `fastadv ood` writes
its report and plot, with one-line errors (exit 2) for its options."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from support.cli import one_error_line

from fastadv.__main__ import main
from fastadv.evaluation import ood


def _random_scores(seed):
    g = np.random.default_rng(seed)
    levels = int(g.integers(2, 12))  # few distinct values: many ties, within and across the sets
    return g.integers(0, levels, int(g.integers(1, 80))) / levels, g.integers(0, levels, int(g.integers(1, 80))) / 3


def _direct_fpr95(in_scores, out_scores):
    """Every threshold t on the anomaly (minus the score): flag anomaly >= t; the lowest FPR with TPR >= 95%."""
    anomaly_in, anomaly_out = -np.asarray(in_scores), -np.asarray(out_scores)
    best = 1.0
    for t in np.unique(np.r_[anomaly_in, anomaly_out]):
        if np.mean(anomaly_out >= t) >= 0.95:
            best = min(best, float(np.mean(anomaly_in >= t)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_metrics_equal_scikit_learn_and_a_direct_computation(seed):
    in_scores, out_scores = _random_scores(seed)
    truth = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    anomaly = -np.r_[in_scores, out_scores]
    found = ood.metrics(in_scores, out_scores)
    assert found["auroc"] == pytest.approx(roc_auc_score(truth, anomaly), abs=1e-12)
    assert found["aupr"] == pytest.approx(average_precision_score(truth, anomaly), abs=1e-12)
    assert found["fpr95"] == pytest.approx(_direct_fpr95(in_scores, out_scores), abs=1e-12)


def test_scores_and_errors():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(ood.score(logits, "msp"), torch.softmax(logits, 1).max(1).values)
    assert torch.allclose(ood.score(logits, "max_logit"), torch.tensor([2.0, 0.0]))
    assert torch.allclose(ood.score(logits, "energy"), torch.logsumexp(logits, 1))
    with pytest.raises(ValueError, match="score must be one of"):
        ood.score(logits, "entropy")
    with pytest.raises(ValueError, match="both data sets"):
        ood.metrics([], [0.5])


def test_adversarial_ood_lowers_auroc_and_leaves_the_model_alone(digits_model):
    model, x, y = digits_model
    noise = torch.rand(120, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = ood.detect_ood(model, (x[:240], y[:240]), (noise, torch.zeros(120, dtype=torch.long)), eps=0.1, steps=5,
                            batch_size=100)  # fmt: skip
    assert report["samples"] == {"in": 240, "out": 120}
    for name in ood.SCORES:
        clean, attacked = report["metrics"]["clean"][name], report["metrics"]["adversarial"][name]
        assert clean["auroc"] > 0.9, (name, clean)  # noise is easy to tell from digits
        assert attacked["auroc"] < clean["auroc"] - 0.05, (name, clean, attacked)
        assert attacked["fpr95"] > clean["fpr95"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())
    # batches do not change the numbers
    again = ood.detect_ood(model, (x[:240], y[:240]), (noise, torch.zeros(120, dtype=torch.long)), eps=0.1, steps=5,
                           batch_size=240)  # fmt: skip
    assert again["metrics"]["adversarial"]["msp"]["auroc"] == pytest.approx(
        report["metrics"]["adversarial"]["msp"]["auroc"], abs=1e-6
    )


@pytest.fixture()
def noise_npz(tmp_path):
    g = np.random.default_rng(0)
    path = tmp_path / "noise.npz"
    np.savez(path, x=g.random((40, 1, 8, 8)).astype(np.float32), y=np.zeros(40, dtype=np.int64))
    return path


def test_cli_ood_writes_its_report_and_plot(noise_npz, tmp_path, capsys):
    results = tmp_path / "ood"
    argv = ["ood", "--out", str(noise_npz), "--eps", "0.1", "--steps", "2", "--limit", "100", "--results", str(results)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "adversarial" in printed
    report = json.loads((results / "report.json").read_text())
    assert set(report["metrics"]) == {"clean", "adversarial"} and report["samples"] == {"in": 100, "out": 40}
    assert (results / "ood.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--eps", "-1"], "--eps"),
        (["--eps", "nan"], "--eps"),
        (["--scores", "entropy"], "--scores"),
        (["--steps", "0"], "--steps"),
        (["--batch-size", "0"], "--batch-size"),
        (["--out", "missing.npz"], "--out: "),
        (["--in", "missing.npz"], "--in: "),
        (["--class-map", "missing.txt"], "--class-map: cannot read"),
        (["--image-size", "8", "--input-size", "8"], "--image-size: give --image-size"),
        (["--results", "taken"], "--results: "),
    ],
)
def test_cli_ood_errors_areone_error_line(extra, expected, noise_npz, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "report.json").write_text("{}")
    extra = [str(tmp_path / e) if e.startswith(("missing", "taken")) else e for e in extra]
    argv = ["ood", "--out", str(noise_npz), "--limit", "20", "--results", str(tmp_path / "r"), *extra]
    line = one_error_line(argv, capsys)
    assert expected in line, line
    if "--results" not in extra:
        assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):  # --out (the OOD data) is required
        main(["ood"])


class _Spy:
    """A streamed source of 16x16 images (read one by one, as a folder's) that records, before the
    first sample of each batch, how many of the model's earlier inputs are still alive."""

    def __new__(cls, count: int, inputs: list):
        from fastadv.data import Source

        class Spy(Source):
            def __init__(self):
                self.labels = (np.arange(count) % 3).astype(np.int64)
                self.alive = []

            def read(self, index: int) -> torch.Tensor:
                if index % 4 == 0 and index:
                    self.alive.append(sum(ref() is not None for ref in inputs))
                    inputs.clear()
                return torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8,
                                     generator=torch.Generator().manual_seed(index))  # fmt: skip

            def _identity(self) -> bytes:
                return b"spy"

        return Spy()


def test_ood_streams_one_batch_at_a_time():
    import weakref

    inputs: list = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                           torch.nn.Flatten(), torch.nn.Linear(4, 3))  # fmt: skip

        def forward(self, x):
            inputs.append(weakref.ref(x))
            return self.net(x)

    in_data, out_data = _Spy(16, inputs), _Spy(16, inputs)
    ood.detect_ood(Recording().eval(), in_data, out_data, eps=0.05, steps=2, batch_size=4, workers=0)
    assert in_data.alive == [0] * 3 and out_data.alive == [0] * 3
