"""Robustness evaluation: numbers checked against the attacks run directly, the cascade, resume,
torch.distributed with two CPU ranks, and the eval / train command lines."""

import json
import os
import subprocess
import sys

import pytest
import torch
from attack_helpers import assert_unchanged, digits_model, snapshot

import fastadv
from fastadv import models
from fastadv.cli import main
from fastadv.evaluate import evaluate, format_report, robust_accuracy


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_model()
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
    import fastadv.evaluate as ev

    real, calls = ev._evaluate_batch, []

    def dies_on_the_third_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ev, "_evaluate_batch", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, (x, y), state_path=state, **args)
    monkeypatch.setattr(ev, "_evaluate_batch", real)
    resumed = evaluate(model, (x, y), state_path=state, **args)
    for key in ("clean_accuracy", "worst_case"):
        assert resumed[key] == full[key]
    for a, b in zip(resumed["attacks"], full["attacks"], strict=True):
        assert {k: v for k, v in a.items() if k != "images_per_s"} == {
            k: v for k, v in b.items() if k != "images_per_s"
        }
    with pytest.raises(ValueError, match="state_path"):
        evaluate(model, (x, y), state_path=state, **{**args, "steps": 4})


_DISTRIBUTED = """
import json, sys, torch, torch.distributed as dist
from fastadv import models
from fastadv.datasets import digits
from fastadv.evaluate import evaluate
dist.init_process_group("gloo")
model = models.load(sys.argv[2])
x, y = digits("test")
report = evaluate(model, (x[:160], y[:160]), ["fgsm", "pgd"], [0.1], steps=3, batch_size=32, progress=False)
if dist.get_rank() == 0:
    json.dump(report, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


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
        assert a["mean_l2"] == pytest.approx(b["mean_l2"], rel=1e-9)


def test_bad_evaluate_arguments(digits):
    model, x, y = digits
    for kwargs, part in (({"attacks": ["fab"]}, "attacks"), ({"eps": [-1]}, "eps"), ({"batch_size": 0}, "batch_size"),
                         ({"attacks": "pgd"}, "attacks")):  # fmt: skip
        with pytest.raises(ValueError, match=part):
            evaluate(model, (x, y), progress=False, **kwargs)


def test_cli_eval_default_job_and_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTADV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["eval", "--out", str(out), "--limit", "64", "--steps", "3", "--eps", "0.05,0.1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 64 and [r["attack"] for r in report["attacks"]] == ["fgsm", "pgd"] * 2
    assert (out / "robustness.png").stat().st_size > 1000 and (out / "examples.png").stat().st_size > 1000
    assert (tmp_path / "cache" / "digits-small_cnn-standard.pt").exists()
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and str(out) in printed
    # the cached model is reused and the resumed evaluation reports the same numbers
    assert main(["eval", "--out", str(out), "--limit", "64", "--steps", "3", "--eps", "0.05,0.1", "--quiet",
                 "--resume", "--no-plots"]) == 0  # fmt: skip
    again = json.loads((out / "report.json").read_text())
    assert again["worst_case"] == report["worst_case"]


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--recipe", "fgsm-rs", "--epochs", "2", "--width", "8", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert (out / "model.pt").exists() and (out / "latest.pt").exists()
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert main(argv + ["--resume"]) == 0  # nothing left to do: the same model
    assert main(["eval", "--model", str(out / "model.pt"), "--limit", "32", "--steps", "2", "--out",
                 str(tmp_path / "ev"), "--no-plots", "--quiet"]) == 0  # fmt: skip
    assert isinstance(models.load(str(out / "model.pt")), torch.nn.Module)


@pytest.mark.parametrize(
    "argv, part",
    [
        (["eval", "--model", "/nonexistent/model.pt"], "--model"),
        (["eval", "--data", "/nonexistent/data.npz"], "--data"),
        (["eval", "--attacks", "fgsm,fab"], "--attacks"),
        (["eval", "--resume"], "--resume"),
        (["eval", "--data", "{wrong_shape}"], "--data"),
        (["eval", "--data", "{labels_out_of_range}"], "--data"),
        (["eval", "--model", "{corrupt}"], "--model"),
        (["train", "--resume"], "--resume"),
        (["train", "--clean-fraction", "2"], "clean"),
        (["train", "--recipe", "mart"], "--recipe"),
        (["eval", "--eps", "a,b"], "--eps"),
    ],
)
def test_cli_errors_are_one_line(argv, part, tmp_path, capsys, monkeypatch):
    import numpy as np

    monkeypatch.setenv("FASTADV_CACHE", str(tmp_path / "cache"))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 9, 9), dtype=np.float32), y=np.zeros(4, dtype=int))
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 1, 16, 16), dtype=np.float32), y=np.full(4, 12))
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x03garbage")
    files = {"wrong_shape": tmp_path / "wrong.npz", "labels_out_of_range": tmp_path / "labels.npz",
             "corrupt": tmp_path / "corrupt.pt"}  # fmt: skip
    argv = [a.format(**files) for a in argv] + ["--quiet"]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert part in err[-1] and "Traceback" not in "\n".join(err), err


def test_torchrun_eval_and_train_with_two_cpu_ranks(digits, tmp_path):
    """`torchrun -m fastadv eval` equals the one-rank run (both one thread per process);
    `torchrun -m fastadv train` trains with DistributedDataParallel and writes one model."""
    models.save(digits[0], str(tmp_path / "model.pt"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reports = {}
    for ranks, port in ((1, "29535"), (2, "29536")):
        out = tmp_path / f"eval{ranks}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", port,
                   "-m", "fastadv", "eval", "--model", str(tmp_path / "model.pt"), "--limit", "96", "--batch-size",
                   "32", "--steps", "3", "--eps", "0.1", "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
        subprocess.run(command, check=True, env=env, timeout=300)
        reports[ranks] = json.loads((out / "report.json").read_text())
    assert reports[2]["settings"]["world_size"] == 2
    assert reports[2]["worst_case"] == reports[1]["worst_case"]
    assert [r["robust_accuracy"] for r in reports[2]["attacks"]] == [
        r["robust_accuracy"] for r in reports[1]["attacks"]
    ]
    out = tmp_path / "train"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29537",
               "-m", "fastadv", "train", "--epochs", "1", "--width", "8", "--out", str(out), "--quiet"]  # fmt: skip
    subprocess.run(command, check=True, env=env, timeout=300)
    assert (out / "model.pt").exists() and len(json.loads((out / "history.json").read_text())) == 1


def test_cli_eval_on_an_image_folder(tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in ("0", "1", "2"):
        (tmp_path / "set" / label).mkdir(parents=True)
        for i in range(4):
            pixels = (torch.rand(20, 24, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "set" / label / f"{i}.png")
    torch.manual_seed(0)
    models.save(models.small_cnn(in_channels=3, num_classes=3, width=8), str(tmp_path / "rgb.pt"))
    argv = ["eval", "--model", str(tmp_path / "rgb.pt"), "--data", str(tmp_path / "set"), "--image-size", "16",
            "--steps", "2", "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["samples"] == 12


def test_cli_train_fine_tunes_an_existing_model(tmp_path):
    base = tmp_path / "base"
    assert main(["train", "--recipe", "standard", "--epochs", "1", "--width", "8", "--out", str(base), "--quiet"]) == 0
    tuned = tmp_path / "tuned"
    argv = ["train", "--init", str(base / "model.pt"), "--recipe", "pgd", "--steps", "2", "--epochs", "1",
            "--out", str(tuned), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    before, after = models.load(str(base / "model.pt")), models.load(str(tuned / "model.pt"))
    assert before.fastadv_spec == after.fastadv_spec  # the width-8 architecture was kept
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values(),
                                                     strict=True))  # fmt: skip
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["train", "--init", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
