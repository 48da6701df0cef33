"""`fastadv train --model module:callable`: a user's torchvision (or timm) architecture trained
adversarially from the command line, from seeded random weights or from --weights, saved as a
fastadv model file that `fastadv eval --model` and `fastadv.models.load` rebuild. A model file
names a factory to import only from torchvision or timm (a file is data; an import runs code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.cli import one_error_line, run_cli

from fastadv import models
from fastadv.checkpoint import CheckpointError

torchvision = pytest.importorskip("torchvision")
RESNET = "torchvision.models:resnet18"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three class folders of JPEGs of mixed sizes (resized on load with --input-size)."""
    root = tmp_path_factory.mktemp("jpegs")
    generator = torch.Generator().manual_seed(0)
    for k, name in enumerate(("blue", "green", "red")):
        (root / name).mkdir()
        for i in range(4):
            pixels = torch.randint(0, 256, (18 + 5 * i, 20 + 3 * i, 3), generator=generator, dtype=torch.uint8)
            pixels[..., k] = 255  # each class has its own colour
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.jpg", quality=90)
    return root


def _train(folder: Path, out: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    return run_cli(["train", "--model", RESNET, "--data", str(folder), "--input-size", "32", "--epochs", "1",
                    "--batch-size", "6", "--workers", "0", "--eps", "0.03", "--quiet", "--out", str(out),
                    *extra], capsys)  # fmt: skip


def test_a_torchvision_resnet_trains_saves_and_evaluates(folder, tmp_path, capsys):
    code, err = _train(folder, tmp_path / "run", capsys)
    assert code == 0, err
    model = models.load(str(tmp_path / "run" / "model.pt"))
    assert isinstance(model, torchvision.models.ResNet) and model.fc.out_features == 3  # the data's classes
    assert any(n.endswith("running_mean") for n, _ in model.named_buffers())  # BatchNorm statistics kept
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["spec"] == {"arch": RESNET, "kwargs": {"num_classes": 3}}
    # the file's weights are the trained ones, not a new draw: they differ from the seeded start
    with pytest.warns(models.RandomWeightsWarning):
        start = models.load(RESNET, num_classes=3, allow_random_weights=True, seed=0)
    assert not torch.equal(model.conv1.weight, start.conv1.weight)
    code, err = run_cli(["eval", "--model", str(tmp_path / "run" / "model.pt"), "--data", str(folder),
                         "--input-size", "32", "--attacks", "fgsm", "--eps", "0.03", "--workers", "0", "--no-plots",
                         "--quiet", "--out", str(tmp_path / "eval")], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    x = torch.stack([torch.zeros(3, 32, 32)])
    assert report["samples"] == 12 and model(x).shape == (1, 3)


def test_weights_are_where_training_starts_and_seed_draws_the_same_start(folder, tmp_path, capsys):
    start = torchvision.models.resnet18(num_classes=3)
    torch.save(start.state_dict(), tmp_path / "start.pth")
    tiny = ("--lr", "1e-30", "--weight-decay", "0")  # steps far under half an ulp of every weight
    code, err = _train(folder, tmp_path / "still", capsys, "--weights", str(tmp_path / "start.pth"), *tiny)
    assert code == 0, err
    trained = models.load(str(tmp_path / "still" / "model.pt"))
    # the parameters stay --weights' (zeros move by ~1e-30; BatchNorm's running statistics move in training)
    for name, parameter in start.named_parameters():
        assert torch.allclose(parameter, trained.get_parameter(name), rtol=1e-6, atol=1e-20), name
    runs = []
    for name in ("a", "b"):
        assert _train(folder, tmp_path / name, capsys, *tiny, "--seed", "3")[0] == 0
        runs.append(models.load(str(tmp_path / name / "model.pt")))
    assert torch.equal(runs[0].conv1.weight, runs[1].conv1.weight)  # --seed 3 drew the same start twice
    assert not torch.allclose(runs[0].conv1.weight, trained.conv1.weight, atol=1e-3)


def test_a_model_file_imports_no_factory_but_torchvisions_and_timms(tmp_path):
    model = torchvision.models.resnet18(num_classes=3)
    for arch, loads in ((RESNET, True), ("support.model_factories:tuple_output", False), ("os:getcwd", False)):
        model.fastadv_spec = {"arch": arch, "kwargs": {"num_classes": 3}}
        models.save(model, str(tmp_path / "m.pt"))
        if loads:
            assert torch.equal(models.load(str(tmp_path / "m.pt")).fc.weight, model.fc.weight)
            continue
        with pytest.raises(CheckpointError, match=f"a model built by {arch}, which a model file may not import"):
            models.load(str(tmp_path / "m.pt"))
    # the way the message gives: that factory with the file as its weights
    model.fastadv_spec = {"arch": "torchvision.models.resnet:resnet18", "kwargs": {"num_classes": 3}}
    models.save(model, str(tmp_path / "sub.pt"))  # a sub-module of torchvision.models qualifies
    rebuilt = models.load(RESNET, str(tmp_path / "sub.pt"), num_classes=3)
    assert torch.equal(rebuilt.fc.weight, model.fc.weight)
    assert torch.equal(models.load(str(tmp_path / "sub.pt")).fc.weight, model.fc.weight)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model", "small_cnn", "--weights", "w.pt"], "--weights: goes with a --model module:callable factory"),
        (["--model", "resnet18", "--num-classes", "3"], "--num-classes: goes with a --model module:callable"),
        (["--model", RESNET, "--weights", "missing.pt"], "--weights: missing.pt: no such file"),
        (["--model", "not_a_model"], "expected resnet18, small_cnn or a module:callable factory"),
        (["--lr", "0"], "argument --lr: "),
        (["--model", "torchvision.models:no_such_net"], "--model: torchvision.models:no_such_net: "),
    ],
)
def test_factory_options_are_checked_in_one_line(folder, tmp_path, capsys, monkeypatch, extra, expected):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(["train", "--data", str(folder), "--input-size", "32", "--workers", "0", "--quiet",
                           "--out", str(tmp_path / "o"), *extra], capsys)  # fmt: skip
    assert expected in line
    assert not (tmp_path / "o").exists()
