"""Command-line arguments that used to fail late or unclearly give one line naming the argument,
exit status 2, before any work: an image size beyond the documented limit, a folder given as a
model, a host that is not this machine's, --eot-samples without --adaptive; `fastadv bench --csv`
is checked before the benchmark runs and never appended to a file that is not a benchmark CSV;
the bench table has a legend and no CUDA-toolkit warning on a CPU."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.cli import one_error_line

from fastadv.__main__ import main

MAX_IMAGE_SIDE = 4096  # the documented limit (fastadv.options.arguments.MAX_IMAGE_SIDE, named in --help)


@pytest.fixture()
def images(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "a" / "0.png")
    return tmp_path / "imgs"


@pytest.mark.parametrize(
    "command, option, value",
    [(command, "--input-size", value) for command in ("eval", "train", "demo") for value in ("100000", "32,100000")]
    + [(command, "--image-size", "100000") for command in ("eval", "demo")],  # (train has no --image-size)
)
def test_an_image_size_beyond_the_limit_is_refused_up_front(command, option, value, images, tmp_path, capsys):
    line = one_error_line([command, "--data", str(images), option, value, "--out", str(tmp_path / "o")], capsys)
    assert option in line and f"at most {MAX_IMAGE_SIDE}" in line, line
    assert not (tmp_path / "o").exists()


def test_a_folder_given_as_a_model_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    line = one_error_line(["eval", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"--model: {tmp_path / 'run'}: a folder, not a model file" in line, line
    line = one_error_line(["train", "--init", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"--init: {tmp_path / 'run'}: a folder, not a model file" in line, line


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.1"])  # not an address; not this machine's (TEST-NET-1)
def test_demo_refuses_a_host_it_cannot_serve_on_before_loading(host, capsys):
    pytest.importorskip("gradio")
    line = one_error_line(["demo", "--host", host, "--model", "/nonexistent.pt", "--quiet"], capsys)
    assert line.startswith(f"fastadv demo: error: --host: cannot serve on '{host}'"), line


def test_eot_samples_without_adaptive_is_an_error(tmp_path, capsys):
    line = one_error_line(["eval", "--eot-samples", "8", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert "--eot-samples" in line and "--adaptive" in line and not (tmp_path / "o").exists()


BENCH = ["bench", "--kernels", "linf_step", "--sizes", "1M", "--dtypes", "float32", "--providers", "eager",
         "--no-compile", "--warmup", "1", "--repeat", "1", "--device", "cpu", "--quiet"]  # fmt: skip


def test_bench_refuses_a_csv_that_is_not_a_benchmark_csv_before_running(tmp_path, capsys, monkeypatch):
    import fastadv.bench.step as step

    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(step, "run", never)
    np.savez(tmp_path / "d.npz", x=np.zeros(3))
    before = (tmp_path / "d.npz").read_bytes()
    assert "is not a fastadv benchmark CSV" in one_error_line([*BENCH, "--csv", str(tmp_path / "d.npz")], capsys)
    assert (tmp_path / "d.npz").read_bytes() == before
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert "is not a fastadv benchmark CSV" in one_error_line([*BENCH, "--csv", str(tmp_path / "other.csv")], capsys)
    assert "is a folder" in one_error_line([*BENCH, "--csv", str(tmp_path)], capsys)
    (tmp_path / "file").write_text("")
    assert "cannot create" in one_error_line([*BENCH, "--csv", str(tmp_path / "file" / "b.csv")], capsys)
    assert "cannot create" in one_error_line(["bench", "--attack", "--csv", "/sys/fastadv-bench/b.csv"], capsys)


def test_bench_appends_to_its_own_csv_and_explains_its_columns(tmp_path, capsys):
    path = tmp_path / "b.csv"
    assert main([*BENCH, "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vs eager: eager's time / its time" in out and "of copy:" in out
    rows = path.read_text().splitlines()
    assert main([*BENCH, "--csv", str(path)]) == 0  # an existing benchmark CSV: appended to
    assert path.read_text().splitlines()[: len(rows)] == rows and len(path.read_text().splitlines()) > len(rows)


@pytest.mark.skipif(not torch.version.cuda, reason="the warning comes from a CUDA build of torch")
def test_bench_on_a_cpu_prints_no_cuda_toolkit_warning(tmp_path):
    """A CUDA build of torch on a machine with a toolkit (CUDA_HOME) but no GPU: torch.compile's
    import of cpp_extension warns "No CUDA runtime is found"."""
    (tmp_path / "cuda").mkdir()
    env = {**os.environ, "CUDA_HOME": str(tmp_path / "cuda"), "CUDA_VISIBLE_DEVICES": ""}
    argv = [a for a in BENCH if a != "--no-compile"]
    argv[argv.index("eager")] = "compile"
    done = subprocess.run([sys.executable, "-m", "fastadv", *argv, "--csv", str(tmp_path / "b.csv")],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "No CUDA runtime" not in done.stderr + done.stdout, done.stderr


@pytest.mark.parametrize("command", ["eval", "train", "bench", "demo"])
@pytest.mark.parametrize("gpu", [True, False])
def test_device_auto_is_the_gpu_when_torch_sees_one(command, gpu, monkeypatch):
    """--device defaults to auto for every command that takes it, resolved when the command line
    is parsed (on the machine that runs it): cuda when torch.cuda.is_available(), else cpu; --help
    says auto, not the device of the machine that built the parser."""
    from fastadv.__main__ import build_parser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    parser = build_parser()
    args = parser.parse_args([command])
    assert args.device == torch.device("cuda" if gpu else "cpu")
    sub = parser._subparsers._group_actions[0].choices[command]
    (action,) = [a for a in sub._actions if "--device" in a.option_strings]
    assert action.default == "auto" and "(default: auto)" in action.help and "else the CPU" in action.help


def test_an_explicit_cuda_device_without_a_gpu_isone_error_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_error_line(["eval", "--device", "cuda"], capsys)
    assert line == "fastadv eval: error: argument --device: cuda was asked for but no CUDA GPU is available " \
                   "(see fastadv eval --help)", line  # fmt: skip


def test_the_report_records_the_device_auto_chose(digits_model, tmp_path):
    """`fastadv eval` with the default --device: report.json names the device the model ran on."""
    import json

    from fastadv import models
    from fastadv._environment import device_name

    models.save(digits_model[0], str(tmp_path / "m.pt"))
    out = tmp_path / "o"
    assert main(["eval", "--model", str(tmp_path / "m.pt"), "--attacks", "fgsm", "--eps", "0.1", "--limit", "20",
                 "--no-plots", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert json.loads((out / "report.json").read_text())["device"] == device_name(expected)
