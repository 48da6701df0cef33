"""`fastadv eval --defense ... --adaptive` and `fastadv train --recipe distill --teacher ...`: the
side-by-side report and its files, and the errors (one line, exit 2, nothing written)."""

import json

import numpy as np
import pytest
import torch
from support.cli import run_cli

from fastadv import models
from fastadv.__main__ import main
from fastadv.data import digits


@pytest.fixture
def small_data(tmp_path):
    images, labels = digits("train")
    np.savez(tmp_path / "small.npz", x=images[:96].numpy(), y=labels[:96].numpy())
    return str(tmp_path / "small.npz")


def test_eval_with_defences_reports_both_runs_side_by_side(digits_model, tmp_path, capsys):
    models.save(digits_model[0], str(tmp_path / "m.pt"))
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tmp_path / "m.pt"), "--limit", "16", "--attacks", "pgd", "--eps", "0.1",
            "--steps", "3", "--defense", "bits:5", "--defense", "jpeg:75,resize:0.9", "--adaptive",
            "--eot-samples", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "non-adaptive" in printed and "gradient masking suspected (bits:5 at eps 0.1)" in printed
    report = json.loads((out / "report.json").read_text())
    assert [d["defense"] for d in report["defenses"]] == ["none", "bits:5", "jpeg:75,resize:0.9"]
    rows = {r["defense"]: r for r in report["comparison"]}
    assert rows["bits:5"]["gradient_masking_suspected"] and not rows["none"]["gradient_masking_suspected"]
    assert rows["bits:5"]["robust_accuracy"] > rows["bits:5"]["adaptive_robust_accuracy"] + 0.1
    random = report["defenses"][2]["adaptive"]["settings"]
    assert random["adaptive"] and random["eot_samples"] == 2
    assert report["defenses"][1]["adaptive"]["settings"]["eot_samples"] == 1  # deterministic: no EOT
    assert (out / "defenses.png").stat().st_size > 0
    assert sorted(p.name for p in out.glob("eval-state.pt.defense*")) == [
        "eval-state.pt.defense0", "eval-state.pt.defense0.adaptive", "eval-state.pt.defense1",
        "eval-state.pt.defense1.adaptive", "eval-state.pt.defense2", "eval-state.pt.defense2.adaptive",
    ]  # fmt: skip
    # resumed: the same numbers from the state files
    assert main([*argv, "--resume", "--no-plots"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert [r["adaptive_robust_accuracy"] for r in again["comparison"]] == [
        r["adaptive_robust_accuracy"] for r in report["comparison"]
    ]


def test_eval_adaptive_without_defences_compares_the_model_itself(digits_model, tmp_path, capsys):
    models.save(digits_model[0], str(tmp_path / "m.pt"))
    argv = ["eval", "--model", str(tmp_path / "m.pt"), "--limit", "16", "--attacks", "pgd", "--eps", "0.1",
            "--steps", "3", "--adaptive", "--out", str(tmp_path / "out"), "--no-plots", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "non-adaptive" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["attack"] for r in report["adaptive"]["attacks"]] == ["pgd", "pgd-margin"]


def test_train_distill_teacher_then_student(small_data, tmp_path, capsys):
    common = ["train", "--data", small_data, "--val-data", small_data, "--recipe", "distill", "--temperature", "20",
              "--epochs", "1", "--width", "4", "--quiet"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "teacher")]) == 0
    teacher = tmp_path / "teacher" / "model.pt"
    assert main([*common, "--teacher", str(teacher), "--out", str(tmp_path / "student")]) == 0
    saved = models.load(str(tmp_path / "student" / "model.pt"))
    assert saved is not None
    recipe = torch.load(tmp_path / "student" / "model.pt", weights_only=False)["metadata"]["recipe"]
    assert recipe["name"] == "distill" and recipe["temperature"] == 20 and isinstance(recipe["teacher"], str)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--defense", "bits:9"], "argument --defense: bits:9: bits must be in 1..8"),
        (["eval", "--defense", "jpeg:0"], "argument --defense: jpeg:0: quality must be in 1..100"),
        (["eval", "--defense", "median:4"], "size must be odd"),
        (["eval", "--defense", "blur:3"], "unknown transform 'blur'"),
        (["eval", "--eot-samples", "0"], "argument --eot-samples"),
        (["train", "--recipe", "pgd", "--teacher", "{m.pt}"], "--teacher: only --recipe distill takes a teacher"),
        (["train", "--recipe", "distill", "--teacher", "/nonexistent.pt"], "--teacher: /nonexistent.pt"),
        (["train", "--recipe", "distill", "--temperature", "0"], "argument --temperature: must be finite > 0"),
        (["train", "--recipe", "distill", "--teacher", "{five.pt}"], "--teacher: labels go up to 9 but the model"),
    ],
)
def test_cli_errors_are_one_line_exit_2_and_write_nothing(argv, message, digits_model, tmp_path, capsys):
    models.save(digits_model[0], str(tmp_path / "m.pt"))
    models.save(models.small_cnn(num_classes=5), str(tmp_path / "five.pt"))
    argv = [a.replace("{m.pt}", str(tmp_path / "m.pt")).replace("{five.pt}", str(tmp_path / "five.pt")) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_cli([*argv, "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
