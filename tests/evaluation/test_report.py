"""What evaluate's report and `fastadv eval`'s output say: the class -> label map,
every setting of every attack, norms averaged over the samples an attack fooled with the count
beside them, rows that say which numbers are cumulative and which are the attack's own, example
images kept from the run (never a second attack), and defended runs' plots and numbers."""

import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image

import fastadv.evaluation.plots
from fastadv import attacks
from fastadv.__main__ import main
from fastadv.attacks.catalog import ATTACKS
from fastadv.data import ImageFolderSource, open_data
from fastadv.evaluation import evaluate, evaluate_defenses, format_report, within_budget


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:48], y[:48]


class _ColourNet(torch.nn.Module):
    """Three classes from the mean of each colour channel, in the order (blue, green, red) that
    sorted folder names give."""

    def forward(self, x):
        return 10 * x.mean((2, 3))[:, [2, 1, 0]]


def test_image_folder_classes_are_in_the_report_and_printed_once(tmp_path):
    colours = {"red": (220, 10, 10), "green": (10, 220, 10), "blue": (10, 10, 220)}
    for name, rgb in colours.items():
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.fromarray(np.full((8, 8, 3), rgb, dtype=np.uint8)).save(tmp_path / name / f"{k}.png")
    report = evaluate(_ColourNet(), ImageFolderSource(str(tmp_path)), ["fgsm"], [0.01], progress=False, workers=0)
    assert report["classes"] == {"blue": 0, "green": 1, "red": 2}
    assert report["clean_accuracy"] == 1.0  # blue images carry label 0, as the map says
    text = format_report(report)
    assert text.count("classes (label = index): blue=0, green=1, red=2") == 1
    assert json.loads(json.dumps(report))["classes"] == {"blue": 0, "green": 1, "red": 2}


def test_a_long_class_map_is_shortened_when_printed():
    from fastadv.evaluation import format_classes

    line = format_classes({f"n{k:04d}": k for k in range(1000)})
    assert line.startswith("classes (label = index): n0000=0, n0001=1,")
    assert line.endswith(", n0011=11, ... (1000 classes, all in report.json)")
    assert format_classes(None) is None


def test_every_setting_of_every_attack_is_recorded_and_rebuilds_the_attack(digits):
    model, x, y = digits
    report = evaluate(model, (x, y), ["fgsm", "pgd", "cw"], [0.1, 0.8], steps=4, cascade=False, progress=False)
    rows = {(r["attack"], r["eps"]): r for r in report["attacks"]}
    pgd = rows["pgd", 0.1]["settings"]
    assert pgd["class"] == "PGD" and pgd["alpha"] == pytest.approx(0.025) and pgd["steps"] == 4
    assert pgd["random_start"] is True and pgd["loss"] == "ce" and "seeded by (seed, batch" in pgd["randomness"]
    cw = rows["cw", 0.8]["settings"]
    assert cw["class"] == "CW" and cw["lr"] == 0.05 and cw["binary_search_steps"] == 5 and cw["c"] == 1.0
    assert rows["fgsm", 0.8]["settings"]["eps"] == 0.8 and rows["fgsm", 0.8]["settings"]["random_start"] is False
    # the deterministic attacks, built from the report alone, give the report's numbers
    for (name, eps), row in rows.items():
        if row["settings"]["randomness"] != "deterministic":
            continue
        cls = getattr(attacks, row["settings"]["class"])
        takes = {*inspect.signature(cls.__init__).parameters, *cls.supported_options}
        attack = cls(model, **{k: v for k, v in row["settings"].items() if k in takes})
        result = attack.run(x, y)
        fooled = result.success & (result.predicted != y)
        if ATTACKS[name].minimal_norm:
            fooled &= within_budget(result.adv, x, eps)
        robust = float(((model(x).argmax(1) == y) & ~fooled).float().mean())
        assert row["robust_accuracy"] == pytest.approx(robust), (name, eps)


def test_help_lists_every_attacks_settings(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, entry in ATTACKS.items():
        assert f"{name}: {entry.attack_class.__name__}(" in text
    assert "alpha=eps/4" in text and "lr=0.05" in text and "n_queries=5000" in text


def test_mean_norms_are_over_the_samples_fooled(digits):
    """DeepFool (deterministic): the mean L2 over the samples fooled within the budget, their
    count beside it; failures no longer count as 0."""
    model, x, y = digits
    eps = 0.6
    report = evaluate(model, (x, y), ["deepfool"], [eps], steps=20, progress=False)
    (row,) = report["attacks"]
    correct = model(x).argmax(1) == y
    result = attacks.DeepFool(model, steps=20).run(x[correct], y[correct])
    fooled = result.success & within_budget(result.adv, x[correct], eps)
    assert 0 < int(fooled.sum()) < int(correct.sum())  # some fail: the case the old mean got wrong
    norms = (result.adv - x[correct]).flatten(1).norm(dim=1)[fooled]
    assert row["samples_fooled"] == int(fooled.sum()) and row["samples_attacked"] == int(correct.sum())
    assert row["mean_l2"] == pytest.approx(float(norms.mean()), rel=1e-5)
    assert row["own_success_rate"] == pytest.approx(int(fooled.sum()) / int(correct.sum()))


def test_cascade_rows_say_what_is_cumulative_and_what_is_the_attacks_own(digits):
    model, x, y = digits
    report = evaluate(model, (x, y), ["fgsm", "pgd"], [0.05, 1.0], steps=3, progress=False)
    rows = {(r["attack"], r["eps"]): r for r in report["attacks"]}
    correct = round(report["clean_accuracy"] * len(y))
    for eps in (0.05, 1.0):
        fgsm, pgd = rows["fgsm", eps], rows["pgd", eps]
        assert fgsm["cumulative"] and pgd["cumulative"]
        assert pgd["samples_attacked"] == correct - fgsm["samples_fooled"]  # FGSM's survivors
        # the cumulative number counts both attacks' successes; each row's own count its own
        assert round(pgd["success_rate"] * correct) == fgsm["samples_fooled"] + pgd["samples_fooled"]
    nothing = rows["pgd", 1.0]  # FGSM at eps 1 fools every sample: PGD attacks none
    assert nothing["samples_attacked"] == 0 and nothing["samples_fooled"] == 0
    assert nothing["mean_linf"] is None and nothing["mean_l2"] is None and nothing["images_per_s"] is None
    assert nothing["own_success_rate"] is None
    line = next(s for s in format_report(report).splitlines() if s.split()[:2] == ["1", "pgd"])
    assert line.split()[-3:] == ["—", "—", "—"] and line.split()[5:7] == ["0", "0"]
    assert "after this attack and the ones above it" in format_report(report)
    alone = evaluate(model, (x, y), ["fgsm", "pgd"], [0.05], steps=3, cascade=False, progress=False)
    assert not alone["attacks"][1]["cumulative"] and "this attack alone (no cascade)" in format_report(alone)


def test_a_slow_attacks_throughput_is_printed_with_its_digits(digits):
    """A ViT attacked on a busy CPU runs at a few hundredths of an image a second: the table shows
    0.013, not 0.0 (which reads as "attacked nothing" or "stalled")."""
    model, x, y = digits
    report = evaluate(model, (x[:16], y[:16]), ["fgsm"], [0.05], progress=False)
    for rate, shown in ((0.01337, "0.013"), (0.5, "0.5"), (12.345, "12.3"), (3456.78, "3456.8")):
        report["attacks"][0]["images_per_s"] = rate
        line = next(s for s in format_report(report).splitlines() if s.split()[1:2] == ["fgsm"])
        assert line.split()[-1] == shown


def test_examples_come_from_the_run_and_plotting_attacks_nothing(digits, tmp_path, monkeypatch):
    model, x, y = digits
    report = evaluate(model, (x, y), ["fgsm", "deepfool"], [0.05, 0.3], steps=10, batch_size=16, examples=6,
                      progress=False)  # fmt: skip
    ex = report["examples"]
    assert ex.eps == 0.3 and torch.equal(ex.images, x[:6]) and torch.equal(ex.labels, y[:6])
    with torch.no_grad():
        assert torch.equal(ex.clean_pred, model(x[:6]).argmax(1))
        assert torch.equal(ex.adversarial_pred, model(ex.adversarial).argmax(1))
    fooled = [by is not None for by in ex.fooled_by]
    assert any(fooled) and set(ex.fooled_by) <= {None, "fgsm", "deepfool"}
    for i, by in enumerate(ex.fooled_by):
        delta = (ex.adversarial[i] - x[i]).flatten()
        if by == "fgsm":
            assert float(delta.abs().max()) <= 0.3 + 1e-6 and ex.adversarial_pred[i] != y[i]
        if by == "deepfool":  # within the budget, as the report counts it
            assert float(delta.norm()) <= 0.3 * (1 + 1e-6) and ex.adversarial_pred[i] != y[i]
    # the first batch's 6 samples are counted in the report as the examples show them
    robust = report["worst_case"][1]["robust_accuracy"]
    assert 0 <= robust < 1

    def no_attack(*args, **kwargs):
        raise AssertionError("plot_examples attacked again")

    monkeypatch.setattr(attacks.Attack, "run", no_attack)
    fastadv.evaluation.plots.plot_examples(ex, str(tmp_path / "examples.png"))
    assert (tmp_path / "examples.png").stat().st_size > 1000
    assert "examples" not in evaluate(model, (x[:4], y[:4]), ["fgsm"], [0.1], progress=False)


def test_fastadv_eval_plots_without_a_second_attack_and_writes_the_map(digits, tmp_path, monkeypatch, capsys):
    from fastadv import models

    model, x, y = digits
    models.save(model, str(tmp_path / "model.pt"))
    np.savez(tmp_path / "d.npz", x=x[:16].numpy(), y=y[:16].numpy())
    calls = []
    real = fastadv.evaluation.plots.plot_examples
    monkeypatch.setattr(fastadv.evaluation.plots, "plot_examples", lambda ex, path: (calls.append(ex), real(ex, path)))
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tmp_path / "model.pt"), "--data", str(tmp_path / "d.npz"), "--attacks", "fgsm,pgd",
            "--eps", "0.1", "--steps", "3", "--workers", "0", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (examples,) = calls
    assert torch.equal(examples.images, x[:8]) and (out / "examples.png").stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    assert "examples" not in report and report["classes"] is None  # an .npz names no classes
    assert report["attacks"][1]["settings"]["alpha"] == pytest.approx(0.025)
    digits_report = evaluate(model, open_data("digits"), ["fgsm"], [0.1], progress=False)
    assert digits_report["classes"] == {str(d): d for d in range(10)}


def test_defended_plot_shows_every_model_and_one_adaptive_number(digits, tmp_path, monkeypatch):
    model, x, y = digits
    data = (x[:24], y[:24])

    def run(target, data, **kwargs):
        return evaluate(target, data, ["pgd"], [0.1], steps=5, progress=False, **kwargs)

    report = evaluate_defenses(model, data, run, ["bits:5"], device=torch.device("cpu"), seed=0, adaptive=True,
                               eot_samples=1)  # fmt: skip
    labels = []
    import matplotlib.figure

    def capture(fig, path, **kwargs):
        labels.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts())

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    fastadv.evaluation.plots.plot_robustness(report, str(tmp_path / "r.png"))
    assert labels == ["undefended: worst case", "undefended: adaptive worst case", "bits:5: worst case",
                      "bits:5: adaptive worst case"]  # fmt: skip
    assert format_report(report).startswith("undefended model")
    for row in report["comparison"]:
        if row["reason"]:
            assert f"to {100 * row['adaptive_robust_accuracy']:.2f}% (their worst case" in row["reason"]


def test_a_state_whose_norms_summed_over_every_attacked_sample_is_not_resumed(digits, tmp_path):
    """Before the norms were averaged over the fooled samples, a state's norm sums were over every
    sample attacked: resuming from one would mix the two meanings in one mean."""
    from fastadv.checkpoint import load, save_atomic

    model, x, y = digits
    state = str(tmp_path / "eval-state.pt")
    evaluate(model, (x, y), ["fgsm"], [0.1], batch_size=16, progress=False, state_path=state)
    old = load(state, "evaluation")
    del old["settings"]["norm_sums"]
    old["next_batch"] = 1
    save_atomic(old, state)
    with pytest.raises(ValueError, match="changed: norm_sums"):
        evaluate(model, (x, y), ["fgsm"], [0.1], batch_size=16, progress=False, state_path=state)
