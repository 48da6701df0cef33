"""The command line: `fastadv bench` (steps, --attack, --train) writes its table and CSV rows;
`fastadv eval` and `fastadv train` write their reports, plots and models (also under torchrun,
and through `python -m fastadv`); bad arguments give one line on stderr and exit status 2; the
options share their defaults with evaluate, fit and Recipe."""

import csv
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.cli import run_cli

from fastadv import checkpoint, models
from fastadv.__main__ import build_parser, main
from fastadv.evaluation import evaluate
from fastadv.recipes import Recipe
from fastadv.train import fit


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:160], y[:160]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _bench_rows(tmp_path, *argv) -> list[dict]:
    """`fastadv bench ARGV --csv FILE --quiet` run to exit status 0, and the rows of its CSV."""
    out = tmp_path / "bench.csv"
    assert main(["bench", *argv, "--csv", str(out), "--quiet"]) == 0
    return _rows(out)


def test_bench_steps_writes_rows(tmp_path, capsys):
    rows = _bench_rows(tmp_path, "--kernels", "linf_step", "--sizes", "1M", "--dtypes", "float32", "--device", "cpu",
                       "--providers", "eager,fused-cpu", "--no-compile", "--warmup", "1", "--repeat", "2")  # fmt: skip
    assert {r["provider"] for r in rows} == {"eager", "fused-cpu", "copy"}
    speedup = [r for r in rows if r["metric"] == "speedup_vs_eager" and r["provider"] == "fused-cpu"]
    assert len(speedup) == 1 and float(speedup[0]["median"]) > 0
    assert "fused-cpu" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_attack_writes_rows(tmp_path, capsys):
    rows = _bench_rows(tmp_path, "--attack", "--models", "digits-cnn", "--batch", "16", "--steps", "2", "--device",
                       "cpu", "--providers", "naive,fastadv,fastadv-early-stop-k4,limit", "--warmup", "1", "--repeat",
                       "2")  # fmt: skip
    assert {r["provider"] for r in rows} == {"naive", "fastadv", "fastadv-early-stop-k4", "limit"}
    assert {r["kernel"] for r in rows} == {"pgd2"} and {r["numel"] for r in rows} == {"16"}
    per_second = {r["provider"]: float(r["median"]) for r in rows if r["metric"] == "images_per_s"}
    assert all(v > 0 for v in per_second.values())
    assert any(r["metric"] == "speedup_vs_naive" for r in rows)
    table = capsys.readouterr().out
    assert "fastadv-early-stop-k4" in table and "img/s" in table


@pytest.mark.slow
def test_bench_attack_apgd_and_cw(tmp_path):
    rows = _bench_rows(tmp_path, "--attack", "--attacks", "apgd,cw", "--models", "digits-cnn", "--batch", "8",
                       "--steps", "2", "--device", "cpu", "--providers", "fastadv,limit", "--warmup", "1", "--repeat",
                       "1")  # fmt: skip
    assert {r["kernel"] for r in rows} == {"apgd2", "cw2"}
    assert {(r["kernel"], r["provider"]) for r in rows if r["metric"] == "speedup_vs_limit"} == {
        ("apgd2", "fastadv"), ("cw2", "fastadv")}  # fmt: skip


@pytest.mark.slow
def test_bench_train_writes_rows(tmp_path, capsys):
    rows = _bench_rows(tmp_path, "--train", "--recipes", "fgsm-rs,pgd", "--models", "digits-cnn", "--batch", "8",
                       "--batches", "2", "--steps", "2", "--device", "cpu", "--warmup", "1", "--repeat",
                       "1")  # fmt: skip
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


@pytest.fixture(scope="module")
def cli_files(digits, tmp_path_factory):
    """One folder with what the error cases read: models (good, other, damaged, NaN, malformed),
    data files (good, changed, truncated, .npy, empty, bad labels), a file, and a finished
    evaluation and training run to resume. {name} in a case's argv is the path of `name`."""
    import numpy as np

    root = tmp_path_factory.mktemp("cli")
    model, x, y = digits
    models.save(model, str(root / "cache" / "digits-small_cnn-standard.pt"))  # the default model, cached
    models.save(model, str(root / "model.pt"))
    torch.manual_seed(1)
    models.save(models.small_cnn(), str(root / "other.pt"))
    x, y = x[:48].numpy(), y[:48].numpy()
    np.savez(root / "data.npz", x=x, y=y)
    changed = x.copy()
    changed[40, 0, 8, 8] = 1 - changed[40, 0, 8, 8]
    np.savez(root / "data2.npz", x=changed, y=y)
    whole = (root / "data.npz").read_bytes()
    (root / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    np.save(root / "x.npy", x)
    np.savez(root / "empty.npz", x=x[:0], y=y[:0])
    np.savez(root / "huge_labels.npz", x=x[:4], y=np.array([0, 1, 2, 10**12]))
    np.savez(root / "uint64_labels.npz", x=x[:4], y=np.array([0, 1, 2, 2**63], dtype=np.uint64))
    np.savez(root / "wrong_shape.npz", x=np.zeros((4, 3, 9, 9), dtype=np.float32), y=np.zeros(4, dtype=int))
    np.savez(root / "labels_out_of_range.npz", x=x[:4], y=np.full(4, 12))
    (root / "corrupt.pt").write_bytes(b"\x80\x03garbage")
    saved = torch.load(root / "model.pt", weights_only=True)
    torch.save({**saved, "spec": "small_cnn"}, root / "bad_spec.pt")
    torch.save({**saved, "state_dict": {**saved["state_dict"], "0.bias": saved["state_dict"]["0.bias"] + 1}},
               root / "tampered.pt")  # fmt: skip
    nan = models.small_cnn()
    with torch.no_grad():
        nan[-1].bias[0] = float("nan")
    models.save(nan, str(root / "nan.pt"))
    (root / "file").write_text("not a folder")
    torch.save(model.state_dict(), root / "state_dict.pt")
    _model_format_files(root, model, x)
    (root / "bomb" / "a").mkdir(parents=True)
    (root / "bomb" / "a" / "big.png").write_bytes(_png_header(40_000, 40_000))
    (root / "json_folder" / "report.json").mkdir(parents=True)
    _image_folders(root)
    assert main(["eval", "--model", str(root / "model.pt"), "--data", str(root / "data.npz"), "--attacks", "fgsm",
                 "--eps", "0.1", "--out", str(root / "eval_run"), "--no-plots", "--quiet"]) == 0  # fmt: skip
    assert main(["train", "--data", str(root / "data.npz"), "--recipe", "standard", "--width", "8", "--epochs", "1",
                 "--out", str(root / "train_run"), "--quiet"]) == 0  # fmt: skip
    return root


def _model_format_files(root, model, x):
    """What the model-format error cases read: weights (safetensors, a narrower CNN's, with Python
    objects, with NaN), a TorchScript archive and programs exported in train and eval mode."""
    import functools
    import warnings

    from safetensors.torch import save_file

    save_file(model.state_dict(), str(root / "weights.safetensors"))
    torch.save(models.small_cnn(width=8).state_dict(), root / "narrow.pt")
    torch.save({**model.state_dict(), "hook": functools.partial(print)}, root / "objects.pt")
    torch.save({**model.state_dict(), "10.bias": torch.full((10,), float("nan"))}, root / "nan_weights.pt")
    with warnings.catch_warnings():  # torch.jit.* are deprecated in favour of torch.export
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(root / "scripted.ts"))
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 14 * 14, 10)).train()  # fmt: skip
    example = torch.as_tensor(x[:4])
    torch.export.save(torch.export.export(net, (example,)), str(root / "train_mode.pt2"))
    torch.export.save(torch.export.export(net.eval(), (example,)), str(root / "eval_mode.pt2"))


def _image_folders(root):
    """Image folders that cannot be evaluated: a class folder without images, images of two
    sizes, no class folder, a file that is no image."""
    from PIL import Image

    for name, files in (("empty_class", {"a/0.png": (8, 8)}), ("mixed", {"a/0.png": (20, 10), "a/1.png": (10, 10)}),
                        ("junk_image", {"a/0.png": (8, 8), "a/1.png": None})):  # fmt: skip
        for file, size in files.items():
            (root / name / file).parent.mkdir(parents=True, exist_ok=True)
            if size is None:
                (root / name / file).write_bytes(b"not a png")
            else:
                Image.new("RGB", size).save(root / name / file)
    (root / "empty_class" / "b").mkdir()
    (root / "no_classes").mkdir()
    (root / "no_classes" / "0.png").write_bytes((root / "mixed" / "a" / "0.png").read_bytes())


def _png_header(width, height):
    """A PNG that claims width x height grey pixels (a decompression bomb: Pillow refuses it on open)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


# the evaluation and training in cli_files, to resume
EVAL_RUN = ["eval", "--model", "{model.pt}", "--data", "{data.npz}", "--attacks", "fgsm", "--eps", "0.1", "--out",
            "{eval_run}", "--no-plots"]  # fmt: skip
TRAIN_RUN = ["train", "--data", "{data.npz}", "--recipe", "standard", "--width", "8", "--epochs", "1", "--out",
             "{train_run}"]  # fmt: skip
UNWRITABLE = "/sys/fastadv-test-out"  # not writable, even by root


def _replaced(argv, option, value):
    i = argv.index(option)
    return argv[:i] + [option, value] + argv[i + 2 :]


def _small_cnn_weights(weights: str, *more: str) -> list[str]:
    """argv evaluating fastadv's small CNN factory with these --weights (and more options)."""
    return ["eval", "--model", "fastadv.models:small_cnn", "--weights", weights, *more]


# Every user error of `fastadv eval` / `fastadv train`: argv ({name}: a path in cli_files; {new}:
# a folder that does not exist) and a fragment of the one line it prints; all exit with 2.
CLI_ERRORS = [
    (["eval", "--model", "/nonexistent/model.pt"], "--model: /nonexistent/model.pt: no such file"),
    (["eval", "--data", "/nonexistent/data.npz"], "--data"),
    (["eval", "--attacks", "fgsm,fab"], "--attacks"),
    (["eval", "--eps", "a,b"], "--eps"),
    (["eval", "--eps", "inf"], "argument --eps: must be finite"),
    (["eval", "--eps", "0.1,nan"], "argument --eps: must be finite"),
    (["eval", "--backend", "bogus"], "argument --backend: must be one of"),
    (["eval", "--device", "meta"], "argument --device: expected cpu, cuda"),
    (["eval", "--seed", "1e23"], "argument --seed: expected an integer"),
    (["train", "--seed", str(10**23)], "argument --seed: must be in [0, 2**63 - 1]"),
    (["train", "--clean-fraction", "2"], "clean"),
    (["train", "--recipe", "mart"], "--recipe"),
    (["train", "--lr", "inf"], "argument --lr: must be finite"),
    (["train", "--weight-decay", "inf"], "argument --weight-decay: must be finite"),
    (["train", "--beta", "inf"], "argument --beta: must be finite"),
    (["train", "--alpha", "nan"], "argument --alpha: must be finite"),
    # resume: the same run, or nothing
    (["eval", "--resume"], "--resume needs --out"),
    (["train", "--resume"], "--resume needs --out"),
    (["eval", "--out", "{new}", "--resume"], "holds no eval-state.pt to continue"),
    (["train", "--out", "{new}", "--resume"], "holds no latest.pt to continue"),
    (["eval", "--out", "{new}", "--resume", "--overwrite"], "--overwrite: not allowed with argument --resume"),
    ([*_replaced(EVAL_RUN, "--attacks", "pgd"), "--resume"], "another evaluation (changed: attacks)"),
    ([*_replaced(EVAL_RUN, "--eps", "0.2"), "--resume"], "another evaluation (changed: eps)"),
    ([*_replaced(EVAL_RUN, "--model", "{other.pt}"), "--resume"], "another evaluation (changed: model)"),
    ([*_replaced(EVAL_RUN, "--data", "{data2.npz}"), "--resume"], "another evaluation (changed: data)"),
    ([*_replaced(TRAIN_RUN, "--width", "4"), "--resume"], "another run (changed: model)"),
    (
        [*[a for a in TRAIN_RUN if a not in ("--width", "8")], "--model", "resnet18", "--resume"],
        "another run (changed: model)",
    ),
    ([*_replaced(TRAIN_RUN, "--data", "{data2.npz}"), "--resume"], "another run (changed: data)"),
    (
        [*[a for a in TRAIN_RUN if a not in ("--width", "8")], "--init", "{model.pt}", "--resume"],
        "another run (changed: model, init)",
    ),
    # never overwrite a run silently
    (EVAL_RUN, "--out: {eval_run} holds a run (eval-state.pt, report.json); --resume continues it"),
    (TRAIN_RUN, "--out: {train_run} holds a run (history.json, latest.pt, model.pt)"),
    (["eval", "--out", "{train_run}"], "holds a run"),
    (["eval", "--out", "{json_folder}", "--overwrite"], "--out: {json_folder}/report.json is a folder where eval"),
    # the output folder, checked before any work
    (["eval", "--out", "{file}"], "--out: {file} exists and is not a folder"),
    (["eval", "--out", "/dev/null"], "--out: /dev/null exists and is not a folder"),
    (["eval", "--out", "{file}/sub"], "--out: cannot create {file}/sub (Not a directory)"),
    (["eval", "--out", UNWRITABLE], f"--out: cannot create {UNWRITABLE}"),
    (["train", "--out", "{file}"], "--out: {file} exists and is not a folder"),
    (["train", "--out", UNWRITABLE], f"--out: cannot create {UNWRITABLE}"),
    # data files
    (["eval", "--data", "{wrong_shape.npz}"], "--data: images of shape (3, 9, 9) do not fit the model"),
    (["eval", "--data", "{labels_out_of_range.npz}"], "--data: labels go up to 12 but the model has 10 classes"),
    (["eval", "--data", "{truncated.npz}"], "--data: {truncated.npz}: not a readable .npz file"),
    (["eval", "--data", "{x.npy}"], "found one array (.npy)"),
    (["eval", "--data", "{empty.npz}"], "holds no samples"),
    (["train", "--data", "{empty.npz}"], "holds no samples"),
    (["eval", "--data", "{huge_labels.npz}"], "labels go up to 1000000000000 but the model has 10 classes"),
    (["train", "--data", "{huge_labels.npz}"], "a new model has at most 100000 classes"),
    (["eval", "--data", "{uint64_labels.npz}"], "y must fit in int64"),
    (["eval", "--data", "{bomb}"], "{bomb}/a/big.png: too many pixels to read safely (a decompression bomb?)"),
    # streamed data: bad folders and data options
    (["eval", "--data", "{empty_class}"], "--data: {empty_class}/b: class folder 'b' holds no images"),
    (["train", "--data", "{empty_class}"], "--data: {empty_class}/b: class folder 'b' holds no images"),
    (["eval", "--data", "{mixed}"], "images of different sizes: {mixed}/a/0.png is 20x10, {mixed}/a/1.png is 10x10"),
    (["train", "--data", "{mixed}"], "--data: images of different sizes"),
    (["eval", "--data", "{no_classes}"], "--data: {no_classes}: expected one sub-folder of images per class"),
    (["eval", "--data", "{junk_image}"], "--data: {junk_image}/a/1.png: not a readable image"),
    (["eval", "--subset", "400"], "--subset: 400 samples asked for, the data has 359"),
    (["eval", "--input-size", "8"], "--data: digits: its images are 16x16 and are not resized"),
    (["eval", "--data", "{data.npz}", "--input-size", "8"], "only image folders are resized on load"),
    (["eval", "--input-size", "8", "--image-size", "8"], "--image-size: give --image-size"),
    (["eval", "--input-size", "2,3,4"], "argument --input-size: expected H,W or N"),
    (["eval", "--input-size", "0,3"], "argument --input-size: must be >= 1"),
    (["eval", "--workers", "-1"], "argument --workers: must be >= 0"),
    (["train", "--data", "{data.npz}", "--val-data", "{wrong_shape.npz}", "--out", "{new}"], "--val-data: images"),
    (["train", "--data", "{data.npz}", "--val-data", "{labels_out_of_range.npz}"], "--val-data: labels go up to 12"),
    (["train", "--data", "{data.npz}", "--val-data", "{truncated.npz}"], "--val-data: {truncated.npz}"),
    # model files
    (["eval", "--model", "{corrupt.pt}"], "--model: {corrupt.pt}: not a readable checkpoint"),
    (["eval", "--model", "{bad_spec.pt}"], "malformed spec"),
    (["eval", "--model", "{tampered.pt}"], "damaged (its weights do not match the checksum"),
    (["eval", "--model", "{nan.pt}"], "10.bias holds non-finite values"),
    (
        ["eval", "--model", "{state_dict.pt}"],
        "--model: {state_dict.pt}: a plain state_dict, not a model: give its architecture as a module:callable "
        "factory and these weights (fastadv eval --model torchvision.models:resnet18 --weights {state_dict.pt}",
    ),  # fmt: skip
    # the other model formats (tests/models/test_model_formats.py; the factories are tests/support/model_factories.py)
    (["eval", "--model", "{file}"], "--model: {file}: not a model or weights file (expected a fastadv model file, a"),
    (_small_cnn_weights("{file}"), "--weights: {file}: not a model or"),
    (["eval", "--model", "{weights.safetensors}"], "--model: {weights.safetensors}: a safetensors file holds weights"),
    (["eval", "--model", "{train_mode.pt2}"], "--model: {train_mode.pt2}: exported in train mode (aten.batch_norm"),
    (
        ["eval", "--model", "{eval_mode.pt2}", "--data", "{wrong_shape.npz}"],
        "--data: images of shape (3, 9, 9) do not fit the model (Guard failed",
    ),
    (
        ["eval", "--model", "{scripted.ts}", "--data", "{wrong_shape.npz}"],
        "--data: images of shape (3, 9, 9) do not fit the model (The following operation failed",
    ),
    (
        ["eval", "--model", "{model.pt}", "--weights", "{state_dict.pt}"],
        "--weights: goes with a --model module:callable factory, not with the file {model.pt}",
    ),
    (
        ["eval", "--model", "no_such_package.models:build"],
        "--model: no_such_package.models:build: cannot import no_such_package.models: no_such_package is not installed",
    ),
    (["eval", "--model", "fastadv.models:no_such_builder"], "fastadv.models:no_such_builder: fastadv.models has no"),
    (
        ["eval", "--model", "support.model_factories:NOT_CALLABLE", "--allow-random-weights"],
        "support.model_factories:NOT_CALLABLE: NOT_CALLABLE is not callable",
    ),
    (
        ["eval", "--model", "support.model_factories:fails", "--allow-random-weights"],
        "--model: support.model_factories:fails: calling it () failed: RuntimeError: no weights for this model",
    ),
    (
        ["eval", "--model", "support.model_factories:not_a_module", "--allow-random-weights"],
        "returned a function, expected a torch.nn.Module",
    ),
    (
        ["eval", "--model", "support.model_factories:downloads", "--allow-random-weights"],
        "tried to download https://download.example/weights.pth; fastadv never downloads",
    ),
    (
        ["eval", "--model", "fastadv.models:resnet18", "--weights", "{state_dict.pt}"],
        "--weights: {state_dict.pt}: the weights do not fit fastadv.models:resnet18: 122 missing keys (stem.0.weight, "
        "stem.1.weight, stem.1.bias, ...); 8 unexpected keys (0.weight, 0.bias, 3.weight, ...)",
    ),
    (
        _small_cnn_weights("{narrow.pt}"),
        "do not fit fastadv.models:small_cnn: 5 shape mismatches (0.weight 8x1x3x3 in the file but 32x1x3x3 in the "
        "model, 0.bias 8 in the file but 32 in the model, 3.weight",
    ),
    (
        _small_cnn_weights("{state_dict.pt}", "--num-classes", "7"),
        "2 shape mismatches (10.weight 10x128 in the file but 7x128 in the model, 10.bias 10 in the file but 7",
    ),
    (
        _small_cnn_weights("{objects.pt}"),
        "--weights: {objects.pt}: holds Python objects besides tensors (refused: weights are read with weights_only",
    ),
    (
        _small_cnn_weights("{nan_weights.pt}"),
        "--weights: {nan_weights.pt}: 10.bias holds non-finite values",
    ),
    (
        _small_cnn_weights("{data.npz}"),
        "--weights: {data.npz}: not a readable state_dict file",
    ),
    (
        _small_cnn_weights("/nonexistent/w.pt"),
        "--weights: /nonexistent/w.pt: no such file",
    ),
    (
        _small_cnn_weights("{scripted.ts}"),
        "--weights: {scripted.ts}: a TorchScript archive, not a state_dict: give it as the model itself",
    ),
    (
        ["eval", "--model", "support.model_factories:tuple_output", "--allow-random-weights"],
        "--model: support.model_factories:tuple_output: returned a tuple of 2 (tensor (2, 10), tensor (2, 10)); "
        "expected logits, a tensor [B, classes] (here B = 2)",
    ),
    (
        ["eval", "--model", "support.model_factories:dict_output", "--allow-random-weights"],
        "returned a dict with keys logits, aux; expected logits",
    ),
    (
        ["eval", "--model", "support.model_factories:wrong_shape", "--allow-random-weights"],
        "returned a tensor of shape (2, 1, 10); expected logits",
    ),
    (
        ["eval", "--model", "support.model_factories:integer_output", "--allow-random-weights"],
        "returned torch.int64 values; expected floating-point",
    ),
    (["eval", "--model", "{model.pt}", "--num-classes", "7"], "--num-classes: {model.pt} returns 10 classes, not 7"),
    (
        ["eval", "--model", "support.model_factories:no_classes", "--num-classes", "7", "--allow-random-weights"],
        "--num-classes: support.model_factories:no_classes returns 10 classes, not 7",
    ),
    (["eval", "--model", "{model.pt}", "--mean", "0.5"], "--mean: needs --std too"),
    (["eval", "--model", "{model.pt}", "--mean", "0.5", "--std", "0"], "--mean/--std: std must be > 0"),
    (
        ["eval", "--model", "{model.pt}", "--mean", "0.5,0.5,0.5", "--std", "1,1,1"],
        "--mean/--std: 3 values, but the images have 1 channel",
    ),
    (["eval", "--mean", "0.5", "--std", "1"], "--mean: goes with --model"),
    (["eval", "--model", "{model.pt}", "--mean", "a", "--std", "1"], "argument --mean: expected a number"),
    (["train", "--init", "{scripted.ts}"], "--init: {scripted.ts}: a TorchScript archive; --init takes a fastadv"),
    (["train", "--init", "fastadv.models:small_cnn"], "--init: fastadv.models:small_cnn: a module:callable factory;"),
    (["train", "--model", "resnet18", "--width", "4"], "--width: --model resnet18 has no width"),
    (["train", "--init", "{model.pt}", "--width", "4"], "--width: --init has no width"),
    # bench: unknown providers, and those that need what this machine lacks
    (["bench", "--providers", "fastest"], "--providers: unknown fastest (choose from eager, compile, copy, fused-"),
    (["bench", "--providers", "compile", "--no-compile"], "--providers: compile is turned off by --no-compile"),
    (
        ["bench", "--attack", "--providers", "fastadv-bf16-cl-graph", "--device", "cpu"],
        "--providers: fastadv-bf16-cl-graph needs a CUDA GPU",
    ),
    (
        ["bench", "--train", "--providers", "naive,fastadv-bf16-cl-graph", "--device", "cpu"],
        "--providers: fastadv-bf16-cl-graph needs a CUDA GPU",
    ),
    (["bench", "--train", "--providers", "fast"], "--providers: unknown fast with --train"),
    (["train", "--init", "{bad_spec.pt}"], "--init: {bad_spec.pt}: malformed spec"),
]


def _filled(text, paths):
    return re.sub(r"\{([^{}]+)\}", lambda m: paths[m.group(1)], text)


def _tree(root):
    """Every path under root with its size and modification time: what a failed command must not change."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in root.rglob("*")}  # fmt: skip


@pytest.mark.parametrize("argv, message", CLI_ERRORS)
def test_cli_errors_are_one_line_exit_2_and_change_nothing(argv, message, cli_files, capsys, monkeypatch):
    monkeypatch.setenv("FASTADV_CACHE", str(cli_files / "cache"))
    monkeypatch.chdir(cli_files)  # the default --out, fastadv-results/..., lands here
    paths = {p.name: str(p) for p in cli_files.iterdir()} | {"new": str(cli_files / "new")}
    argv = [_filled(a, paths) for a in argv] + ["--quiet"]
    before = _tree(cli_files)
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1, err
    assert _filled(message, paths) in err[0] and err[0].startswith(f"fastadv {argv[0]}: error: "), err
    assert _tree(cli_files) == before, "a failed command changed files"


def test_cli_overwrite_replaces_a_run_and_a_failed_run_leaves_nothing(digits, tmp_path, capsys, monkeypatch):
    models.save(digits[0], str(tmp_path / "m.pt"))
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tmp_path / "m.pt"), "--limit", "16", "--attacks", "fgsm", "--eps", "0.1",
            "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"report in {out}"  # no plots: not "report and plots"
    (out / "report.json").write_text("{}")
    assert main(argv) == 2 and "holds a run" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["samples"] == 16

    import fastadv.cli.eval_cmd as eval_cmd  # (the function `fastadv eval` runs, replaced)

    def fails(*args, **kwargs):
        raise RuntimeError("the attack failed\nsecond line")

    monkeypatch.setattr(eval_cmd, "evaluate", fails)
    new = tmp_path / "new" / "out"
    assert main([*argv[:-4], "--out", str(new), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "fastadv eval: error: the attack failed"
    assert not (tmp_path / "new").exists(), "a failed evaluation leaves no folder behind"


def test_cli_train_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import fastadv.train as train

    real = train._one_epoch

    def nan_in_epoch_2(run, epoch):
        if epoch == 1:
            run.model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return real(run, epoch)

    monkeypatch.setattr(train, "_one_epoch", nan_in_epoch_2)
    out = tmp_path / "run"
    argv = ["train", "--recipe", "standard", "--epochs", "3", "--width", "8", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training stopped: the loss became nan in epoch 2, batch 1" in err[0], err
    assert (
        sorted(os.listdir(out)) == ["latest.pt"] and checkpoint.load(str(out / "latest.pt"), "training")["epoch"] == 0
    )


def test_reports_are_strict_json(tmp_path):
    from fastadv.evaluation import write_json

    write_json(str(tmp_path / "r.json"), {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})

    def refuse(name):
        raise ValueError(name)

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {"a": None, "b": [None, 1.5],
                                                                                     "c": {"d": None}}  # fmt: skip


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
    width = inspect.signature(models.small_cnn).parameters["width"].default
    assert options["width"] is None and f"(default: {width})" in _help("train", "width")  # given: checked


def _help(command, dest):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return next(a.help for a in sub.choices[command]._actions if a.dest == dest)


@pytest.mark.parametrize("command", ["eval", "train", "bench"])
def test_help_shows_every_default(command):
    """--help shows every option's default (those that have one)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for action in sub.choices[command]._actions:
        if action.default is not None and action.default is not False and action.dest != "help":
            assert "default" in (action.help or ""), action.dest
    assert "(default: 0)" in _help("train", "seed") and "(default: 0.0)" in _help("train", "weight_decay")


def test_eps_are_sorted_and_repeats_dropped_attacks_keep_their_order():
    """duplicate or unsorted --eps / --attacks. Attacks run in the order given (the
    cascade's order is meaningful; --help says so), a repeat dropped."""
    args = build_parser().parse_args(["eval", "--eps", "0.1,0.05,0.1,0,0.05", "--attacks", "pgd,fgsm,pgd"])
    assert args.eps == [0.0, 0.05, 0.1] and args.attacks == ["pgd", "fgsm"]
    assert "order given" in _help("eval", "attacks") and "sorted" in _help("eval", "eps")


def test_model_files_get_the_umask_and_stale_temporaries_are_removed(digits, tmp_path, monkeypatch):
    """model and checkpoint files were 0600 where the JSON is 0666 less the umask; a
    save killed midway left .tmp-*.pt behind: the next command removes those of dead processes."""
    import socket

    old = os.umask(0o027)
    try:
        models.save(digits[0], str(tmp_path / "m.pt"))
        checkpoint.save_atomic({"kind": "x"}, str(tmp_path / "state.pt"))
    finally:
        os.umask(old)
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "state.pt").stat().st_mode & 0o777 == 0o640
    out = tmp_path / "out"
    out.mkdir()
    host = socket.gethostname()
    dead, live, old_style, remote = (f".tmp-999999999@{host}-a.pt", f".tmp-{os.getpid()}@{host}-b.pt",
                                     ".tmp-c.pt", ".tmp-1@another-host.example-d.pt")  # fmt: skip
    for name in (dead, live, old_style, remote):
        (out / name).write_bytes(b"")
    argv = ["eval", "--model", str(tmp_path / "m.pt"), "--limit", "8", "--attacks", "fgsm", "--eps", "0.1",
            "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    left = {p.name for p in out.iterdir()}
    assert dead not in left and old_style not in left and {live, remote} <= left


@pytest.mark.slow
def test_python_dash_m_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "fastadv", "eval", "--steps", "0"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2 and "--steps" in done.stderr.strip().splitlines()[-1]


def test_the_console_script_is_the_dispatcher(capsys):
    """pyproject.toml's `fastadv` script names the dispatcher that `python -m fastadv` runs (read
    from the file: an installed copy may be older than the checkout)."""
    import importlib
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    module, _, name = pyproject["project"]["scripts"]["fastadv"].partition(":")
    script = getattr(importlib.import_module(module), name)
    assert script is main
    assert run_cli(["eval", "--steps", "0"], capsys)[0] == 2
