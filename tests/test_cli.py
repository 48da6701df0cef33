"""The command line: `fastadv bench` (steps, --attack, --train) writes its table and CSV rows;
`fastadv eval` and `fastadv train` write their reports, plots and models (also under torchrun,
and through `python -m fastadv`); bad arguments give one line on stderr and exit status 2; the
options share their defaults with evaluate, fit and Recipe."""

import csv
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

from fastadv import models
from fastadv.cli import build_parser, main
from fastadv.evaluate import evaluate
from fastadv.recipes import Recipe
from fastadv.train import fit


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:160], y[:160]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_steps_writes_rows(tmp_path, capsys):
    out = tmp_path / "step.csv"
    argv = ["bench", "--kernels", "linf_step", "--sizes", "1M", "--dtypes", "float32", "--device", "cpu",
            "--providers", "eager,fused-cpu", "--no-compile", "--warmup", "1", "--repeat", "2", "--csv", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out)
    assert {r["provider"] for r in rows} == {"eager", "fused-cpu", "copy"}
    speedup = [r for r in rows if r["metric"] == "speedup_vs_eager" and r["provider"] == "fused-cpu"]
    assert len(speedup) == 1 and float(speedup[0]["median"]) > 0
    assert "fused-cpu" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_attack_writes_rows(tmp_path, capsys):
    out = tmp_path / "attack.csv"
    argv = ["bench", "--attack", "--models", "digits-cnn", "--batch", "16", "--steps", "2", "--device", "cpu",
            "--providers", "naive,fastadv,fastadv-early-stop-k4,limit", "--warmup", "1", "--repeat", "2",
            "--csv", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out)
    assert {r["provider"] for r in rows} == {"naive", "fastadv", "fastadv-early-stop-k4", "limit"}
    assert {r["kernel"] for r in rows} == {"pgd2"} and {r["numel"] for r in rows} == {"16"}
    per_second = {r["provider"]: float(r["median"]) for r in rows if r["metric"] == "images_per_s"}
    assert all(v > 0 for v in per_second.values())
    assert any(r["metric"] == "speedup_vs_naive" for r in rows)
    table = capsys.readouterr().out
    assert "fastadv-early-stop-k4" in table and "img/s" in table


@pytest.mark.slow
def test_bench_attack_apgd_and_cw(tmp_path):
    out = tmp_path / "attack.csv"
    argv = ["bench", "--attack", "--attacks", "apgd,cw", "--models", "digits-cnn", "--batch", "8", "--steps", "2",
            "--device", "cpu", "--providers", "fastadv,limit", "--warmup", "1", "--repeat", "1", "--csv", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out)
    assert {r["kernel"] for r in rows} == {"apgd2", "cw2"}
    assert {(r["kernel"], r["provider"]) for r in rows if r["metric"] == "speedup_vs_limit"} == {
        ("apgd2", "fastadv"), ("cw2", "fastadv")}  # fmt: skip


@pytest.mark.slow
def test_bench_train_writes_rows(tmp_path, capsys):
    out = tmp_path / "train.csv"
    argv = ["bench", "--train", "--recipes", "fgsm-rs,pgd", "--models", "digits-cnn", "--batch", "8",
            "--batches", "2", "--steps", "2", "--device", "cpu", "--warmup", "1", "--repeat", "1",
            "--csv", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(out)
    assert {r["kernel"] for r in rows} == {"train-fgsm-rs", "train-pgd2"}
    assert {r["provider"] for r in rows} == {"naive", "fastadv", "fastadv-bf16-cl"}  # no graphs on a CPU
    assert {r["numel"] for r in rows} == {"16"}
    assert all(float(r["median"]) > 0 for r in rows if r["metric"] == "speedup_vs_naive")
    assert "vs naive" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--attack", "--providers", "fastest"], "--providers"),
        (["bench", "--providers", "fused-cuda", "--device", "cpu"], "--providers"),
        (["bench", "--attack", "--models", "vgg"], "--models"),
        (["bench", "--attack", "--attacks", "square"], "--attacks"),
        (["bench", "--train", "--providers", "fastadv-bf16-cl-graph", "--device", "cpu"], "--providers"),
        (["bench", "--train", "--attack"], "--train"),
        (["bench", "--train", "--recipes", "trades"], "--recipes"),
        (["bench", "--attack", "--attacks", "cw", "--providers", "naive"], "--providers"),
        (["bench", "--steps", "0"], "--steps"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        if main(argv) == 2:
            raise SystemExit(2)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.slow
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


@pytest.mark.slow
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
def test_cli_errors_are_one_line(argv, part, digits, tmp_path, capsys, monkeypatch):
    import numpy as np

    monkeypatch.setenv("FASTADV_CACHE", str(tmp_path / "cache"))
    models.save(digits[0], str(tmp_path / "cache" / "digits-small_cnn-standard.pt"))  # the default model, cached
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


@pytest.mark.slow
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


def test_cli_eval_apgd_cascade(digits, tmp_path):
    model = digits[0]
    models.save(model, str(tmp_path / "m.pt"))
    argv = ["eval", "--model", str(tmp_path / "m.pt"), "--attacks", "apgd-ce,apgd-t", "--eps", "0.1", "--steps", "3",
            "--limit", "32", "--out", str(tmp_path / "out"), "--no-plots", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    ce, t = json.loads((tmp_path / "out" / "report.json").read_text())["attacks"]
    assert t["samples_attacked"] == round(ce["robust_accuracy"] * 32), "APGD-T ran on APGD-CE's survivors only"


def _defaults(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a.default for a in sub.choices[command]._actions}


def test_options_share_their_defaults_with_the_api():
    signature = {k: p.default for k, p in inspect.signature(evaluate).parameters.items()}
    options = _defaults("eval")
    for key in ("steps", "batch_size", "seed", "backend"):
        assert options[key] == signature[key], key
    assert options["attacks"] == list(signature["attacks"]) and options["eps"] == list(signature["eps"])
    assert options["no_cascade"] is not signature["cascade"] and options["channels_last"] is signature["channels_last"]
    recipe, fitted = Recipe(), {k: p.default for k, p in inspect.signature(fit).parameters.items()}
    options = _defaults("train")
    for key in ("alpha", "steps", "replays", "beta", "clean_fraction"):
        assert options[key] == getattr(recipe, key), key
    assert options["schedule"] == fitted["schedule"] and options["seed"] == fitted["seed"]
    assert options["width"] == inspect.signature(models.small_cnn).parameters["width"].default


@pytest.mark.slow
@pytest.mark.parametrize("module", ["fastadv", "fastadv.cli"])
def test_python_dash_m_runs_the_command_line(module):
    done = subprocess.run([sys.executable, "-m", module, "eval", "--steps", "0"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2 and "--steps" in done.stderr.strip().splitlines()[-1]
