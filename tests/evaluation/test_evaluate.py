"""Robustness evaluation: numbers checked against the attacks run directly, the cascade, resume,
and torch.distributed with two CPU ranks. (The eval / train command lines: app/test_cli.py.)"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from support.model_state import assert_unchanged, snapshot
from support.models import GammaModel
from support.reports import assert_same_report, interrupt_at_batch

import fastadv
from fastadv import _distributed, models
from fastadv._cascade import run_cascade
from fastadv.evaluation import evaluate, format_report, robust_accuracy


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:160], y[:160]


def test_report_matches_the_attacks_run_directly(digits):
    model, x, y = digits
    before = snapshot(model)
    report = evaluate(model, (x, y), ["fgsm"], [0.05, 0.1], batch_size=64, progress=False)
    assert_unchanged(model, before)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert report["clean_accuracy"] == pytest.approx(float(clean.float().mean()))
    for eps in (0.05, 0.1):
        adv = fastadv.FGSM(model, eps=eps)(x, y)  # deterministic: no random start
        with torch.no_grad():
            robust = clean & (model(adv).argmax(1) == y)
        row = next(r for r in report["attacks"] if r["eps"] == eps)
        assert row["robust_accuracy"] == pytest.approx(float(robust.float().mean()))
        assert row["success_rate"] == pytest.approx(float((clean & ~robust).sum() / clean.sum()))
        assert row["mean_linf"] == pytest.approx(eps, rel=1e-5) and row["samples_attacked"] == int(clean.sum())
        assert 0 <= row["f1"] <= 1 and row["images_per_s"] > 0
    assert robust_accuracy(report) == robust_accuracy(report, "fgsm")
    assert "worst case" in format_report(report)
    json.dumps(report)  # JSON-ready


@pytest.mark.slow
def test_minimal_norm_attacks_count_only_within_the_budget(digits):
    model, x, y = digits
    report = evaluate(model, (x, y), ["deepfool", "cw"], [0.5, 1.0], steps=10, cascade=False, progress=False)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    result = fastadv.DeepFool(model, steps=10).run(x[clean], y[clean])  # deterministic
    distance = (result.adv - x[clean]).flatten(1).norm(dim=1)
    for eps in (0.5, 1.0):
        fooled = result.success & (distance <= eps * (1 + 1e-6))
        row = next(r for r in report["attacks"] if r["eps"] == eps and r["attack"] == "deepfool")
        assert row["robust_accuracy"] == pytest.approx(float((clean.sum() - fooled.sum()) / len(y)))
        assert 0 < row["success_rate"] < 1 and row["mean_l2"] <= eps
    cw = [r for r in report["attacks"] if r["attack"] == "cw"]
    assert cw[0]["robust_accuracy"] >= cw[1]["robust_accuracy"], "a larger budget never fools fewer samples"


def test_cascade_attacks_only_the_survivors(digits):
    model, x, y = digits
    report = evaluate(model, (x, y), ["fgsm", "pgd"], [0.1], steps=5, batch_size=64, progress=False)
    fgsm, pgd = report["attacks"]
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum())
    assert fgsm["samples_attacked"] == clean
    assert pgd["samples_attacked"] == round(fgsm["robust_accuracy"] * len(y)), "PGD ran on FGSM's survivors only"
    assert pgd["robust_accuracy"] <= fgsm["robust_accuracy"]
    assert report["worst_case"][0]["robust_accuracy"] == pgd["robust_accuracy"]
    independent = evaluate(model, (x, y), ["fgsm", "pgd"], [0.1], steps=5, batch_size=64, cascade=False, progress=False)
    assert independent["attacks"][1]["samples_attacked"] == clean
    assert independent["worst_case"][0]["robust_accuracy"] <= min(r["robust_accuracy"] for r in independent["attacks"])


def test_resume_gives_the_same_report(digits, tmp_path, monkeypatch):
    model, x, y = digits
    args = dict(attacks=["fgsm", "pgd"], eps=[0.1], steps=3, batch_size=32, progress=False)
    full = evaluate(model, (x, y), **args)
    state = str(tmp_path / "state.pt")
    interrupt_at_batch(monkeypatch, 3, lambda: evaluate(model, (x, y), state_path=state, **args))
    assert_same_report(evaluate(model, (x, y), state_path=state, **args), full)
    with pytest.raises(ValueError, match="state_path"):
        evaluate(model, (x, y), state_path=state, **{**args, "steps": 4})


def test_resume_refuses_another_model_or_data(digits, tmp_path):
    """A state file holds sums over one model and one data set: resuming it with another model,
    or other data of the same size, would report a mix of two evaluations."""
    model, x, y = digits
    args = dict(attacks=["fgsm"], eps=[0.1], batch_size=64, progress=False)
    state = str(tmp_path / "state.pt")
    evaluate(model, (x, y), state_path=state, **args)
    other = models.small_cnn()
    with pytest.raises(ValueError, match=r"state_path: .*another evaluation \(changed: model\)"):
        evaluate(other.eval(), (x, y), state_path=state, **args)
    changed = x.clone()
    changed[100, 0, 5, 5] = 1 - changed[100, 0, 5, 5]  # one pixel of the second batch
    with pytest.raises(ValueError, match=r"\(changed: data\)"):
        evaluate(model, (changed, y), state_path=state, **args)
    with pytest.raises(ValueError, match=r"\(changed: data\)"):
        evaluate(model, (x, y.roll(1)), state_path=state, **args)
    assert evaluate(model, (x, y), state_path=state, **args)["samples"] == 160  # the same run still resumes


_DISTRIBUTED = """
import json, sys, torch, torch.distributed as dist
from fastadv import models
from fastadv.data import digits
from fastadv.evaluation import evaluate
dist.init_process_group("gloo")
model = models.load(sys.argv[2])
x, y = digits("test")
report = evaluate(model, (x[:160], y[:160]), ["fgsm", "pgd"], [0.1], steps=3, batch_size=32, progress=False)
if dist.get_rank() == 0:
    json.dump(report, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_cpu_ranks_give_the_single_process_report(digits, tmp_path):
    """Both runs in processes with one thread each: CPU kernels sum in another order with another
    thread count, which moves a few samples across the decision boundary."""
    model = digits[0]
    models.save(model, str(tmp_path / "model.pt"))
    script = tmp_path / "run.py"
    script.write_text(_DISTRIBUTED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reports = {}
    for ranks, port in ((1, "29533"), (2, "29534")):
        out = tmp_path / f"report{ranks}.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", port,
                   str(script), str(out), str(tmp_path / "model.pt")]  # fmt: skip
        subprocess.run(command, check=True, env=env, timeout=300)
        reports[ranks] = json.loads(out.read_text())
    single, ranks = reports[1], reports[2]
    assert ranks["settings"]["world_size"] == 2
    assert ranks["clean_accuracy"] == single["clean_accuracy"] and ranks["worst_case"] == single["worst_case"]
    for a, b in zip(ranks["attacks"], single["attacks"], strict=True):
        for key in ("robust_accuracy", "success_rate", "f1", "samples_attacked"):
            assert a[key] == b[key], key
        assert a["mean_l2"] == b["mean_l2"] or a["mean_l2"] == pytest.approx(b["mean_l2"], rel=1e-9)


def test_bad_evaluate_arguments(digits):
    model, x, y = digits
    for kwargs, part in (({"attacks": ["fab"]}, "attacks"), ({"eps": [-1]}, "eps"), ({"batch_size": 0}, "batch_size"),
                         ({"attacks": "pgd"}, "attacks"), ({"eps": []}, "eps"), ({"attacks": ["pgd", "fab"]}, "fab"),
                         ({"amp": "fp64"}, "amp"), ({"steps": 0}, "steps"),
                         ({"data": (x[:0], y[:0])}, "data holds no samples")):  # fmt: skip
        data = kwargs.pop("data", (x, y))
        with pytest.raises(ValueError, match=part):
            evaluate(model, data, progress=False, **kwargs)


def test_run_cascade_attacks_the_survivors_in_chunks():
    robust = torch.tensor([True, False, True, True, True, False, True])
    calls, chunks = [], []

    def attack(stage, index):
        calls.append((stage, index.tolist()))
        return index % 2 == 0 if stage == "a" else torch.ones_like(index, dtype=torch.bool)

    runs = run_cascade(
        ["a", "b"], robust, attack, batch_size=2, on_chunk=lambda s, c, n, i, f: chunks.append((s, c, n))
    )
    assert calls == [("a", [0, 2]), ("a", [3, 4]), ("a", [6]), ("b", [3])], "b attacks only what a left robust"
    assert chunks == [("a", 0, 3), ("a", 1, 3), ("a", 2, 3), ("b", 0, 1)]
    assert robust.tolist() == [False] * 7
    assert runs[0].fooled.tolist() == [True, True, False, True, True] == runs[0].newly.tolist()
    assert runs[1].index.tolist() == [3] and runs[1].fooled.tolist() == [True]


def test_run_cascade_on_every_sample_and_with_nothing_to_attack():
    robust, stages = torch.tensor([True, True, False]), []
    runs = run_cascade([0, 1], robust, lambda s, i: torch.ones_like(i, dtype=torch.bool), survivors_only=False,
                       on_stage=lambda stage, run: stages.append((stage, robust.tolist())))  # fmt: skip
    assert [r.index.tolist() for r in runs] == [[0, 1], [0, 1]]
    assert runs[0].newly.tolist() == [True, True] and runs[1].newly.tolist() == [False, False]
    assert stages == [(0, [False, False, False]), (1, [False, False, False])]
    calls = []
    runs = run_cascade(["x"], torch.zeros(3, dtype=torch.bool), lambda s, i: calls.append(s))
    assert calls == [] and runs[0].index.numel() == 0 and runs[0].fooled.numel() == 0


def test_distributed_helpers_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _distributed.rank_and_world() == (0, 1) and not _distributed.is_initialized()
    assert _distributed.launched_world_size() == 1
    assert _distributed.init_from_env(torch.device("cpu")) == (0, torch.device("cpu"))
    assert _distributed.shared("eval-1") == "eval-1"
    values = torch.arange(3.0)
    assert _distributed.all_reduce(values) is values and _distributed.all_reduce(values, "max") is values
    _distributed.barrier()
    _distributed.destroy()


def test_non_finite_adversarial_images_count_as_robust(digits):
    """NaN adversarial images (infinite input gradients at black pixels) were
    "fooled" and gave robust 6% and mean_l2 NaN; they count as not fooled and are reported."""
    model, x, y = digits

    x, y = x[:64], y[:64]
    report = evaluate(GammaModel(model), (x, y), ["pgd-l2", "deepfool"], [1.0], steps=5, progress=False)
    for row in report["attacks"]:
        assert row["robust_accuracy"] >= report["clean_accuracy"] - 0.1, row
        assert row["mean_l2"] == row["mean_l2"] and row["mean_linf"] == row["mean_linf"]  # not NaN
    deepfool = next(r for r in report["attacks"] if r["attack"] == "deepfool")
    assert deepfool["non_finite"] > 0
    assert "non-finite adversarial images (counted as not fooled): " in format_report(report)


def test_evaluate_gives_back_each_modules_own_mode(digits):
    """a BatchNorm set to eval inside a train-mode model stays in eval (it was
    put back in train mode with the rest), and parameters keep requires_grad."""
    model, x, y = digits
    mixed = torch.nn.Sequential(torch.nn.BatchNorm2d(1), copy.deepcopy(model)).train()
    mixed[0].eval()
    model_modes = [m.training for m in mixed.modules()]
    evaluate(mixed, (x[:16], y[:16]), ["fgsm"], [0.05], progress=False)
    assert [m.training for m in mixed.modules()] == model_modes
    assert mixed.training and not mixed[0].training
    assert all(p.requires_grad for p in mixed.parameters())


def test_examples_of_a_minimal_norm_attack_use_the_reports_rule(digits):
    """examples.png showed DeepFool's samples fooled beyond the budget as
    fooled (8 of 8 where the report said 89% robust); it shows what the report counts (the
    samples the evaluation itself kept)."""
    model, x, y = digits
    x, y = x[:8], y[:8]
    report = evaluate(model, (x, y), ["deepfool"], [0.3], steps=20, progress=False, examples=8)
    ex = report["examples"]
    clean_pred, adv, adv_pred = ex.clean_pred, ex.adversarial, ex.adversarial_pred
    fooled = (clean_pred == y) & (adv_pred != y)
    assert fooled.tolist() == [by is not None for by in ex.fooled_by]
    assert report["attacks"][0]["robust_accuracy"] == pytest.approx(float(((clean_pred == y) & ~fooled).float().mean()))
    assert bool(fooled.logical_not().any())
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 0.3 * (1 + 1e-6)
