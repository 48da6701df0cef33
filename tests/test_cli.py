"""The command line: `fastadv bench` (steps and --attack) writes its table and CSV rows; bad
arguments give one line on stderr and exit status 2."""

import csv

import pytest

from fastadv.cli import main


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
