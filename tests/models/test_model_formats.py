"""The model formats `fastadv eval --model` and `fastadv.models.load` read besides fastadv's own
files: the digits CNN saved as TorchScript, as torch.export programs (dynamic, fixed and bounded
batch sizes) and as a state_dict (.pt, .safetensors) for a `module:callable` factory gives the
same report as the same model in fastadv's file; torchvision's ResNet-18 with --num-classes and
--mean/--std runs; factories get weights=None / pretrained=False and never download; models that
return no logits, and weights that do not fit, are refused in one line (more in app/test_cli.py's
CLI_ERRORS)."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fastadv import FGSM, models
from fastadv.__main__ import main
from fastadv.models import ExportedModel, ModelError, Normalized

EVAL = ["--attacks", "fgsm", "--eps", "0.1", "--batch-size", "20", "--no-plots", "--quiet"]


FORMAT_NAMES = ["torchscript", "traced", "export-dynamic", "export-fixed-batch", "export-bounded", "factory-pt",
                "factory-safetensors", "factory-checkpoint"]  # fmt: skip


def _export(model, example, dynamic=None):
    shapes = None if dynamic is None else ({0: dynamic},)
    return torch.export.export(model, (example,), dynamic_shapes=shapes)


@pytest.fixture(scope="module")
def saved(digits_model, tmp_path_factory):
    """The digits CNN in every format, 48 test images, and its report from fastadv's own file."""
    from safetensors.torch import save_file

    model, x, y = digits_model
    root = tmp_path_factory.mktemp("formats")
    np.savez(root / "data.npz", x=x[:48].numpy(), y=y[:48].numpy())
    models.save(model, str(root / "native.pt"))
    with warnings.catch_warnings():  # torch.jit.* are deprecated in favour of torch.export
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(root / "scripted.ts"))
        torch.jit.save(torch.jit.trace(model, x[:4]), str(root / "traced.pt"))  # (any name: read by content)
    torch.export.save(_export(model, x[:4], torch.export.Dim("batch")), str(root / "dynamic.pt2"))
    torch.export.save(_export(model, x[:8]), str(root / "fixed8.pt2"))  # batches of exactly 8
    torch.export.save(_export(model, x[:4], torch.export.Dim("batch", min=3, max=6)), str(root / "bounded.pt2"))
    torch.save(model.state_dict(), root / "weights.pth")
    save_file(model.state_dict(), str(root / "weights.safetensors"))
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in model.state_dict().items()}},
               root / "ddp_checkpoint.pt")  # fmt: skip
    native = _eval(root, "native", "--model", str(root / "native.pt"))
    return root, native


def _eval(root, name, *model_args):
    out = root / f"out-{name}"
    argv = ["eval", *model_args, "--data", str(root / "data.npz"), *EVAL, "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


# computed from softmax confidences, which a model that runs a batch in chunks (a torch.export
# program with bounded batch sizes) gets equal only up to float32 rounding
_CALIBRATION = ("ece", "rms_calibration_error", "reliability")


def _numbers(report):
    """What must not depend on the model's format: everything but speeds, times and names, and
    the calibration numbers (compared by `_calibration`)."""
    rows = [{k: v for k, v in r.items() if k != "images_per_s" and k not in _CALIBRATION} for r in report["attacks"]]
    return report["samples"], report["clean_accuracy"], rows, report["worst_case"]


def _calibration(report):
    """The calibration numbers as one flat list (None for an empty bin)."""
    clean = report["calibration"]["clean"]
    values = [
        clean["ece"],
        clean["rms_calibration_error"],
        *(v for key in ("count", "confidence", "accuracy") for v in clean["reliability"][key]),
    ]
    for row in report["attacks"]:
        values += [row["ece"], row["rms_calibration_error"]]
        values += [v for key in ("count", "confidence", "accuracy") for v in row["reliability"][key]]
    return values


@pytest.mark.parametrize(
    "model_args",
    [
        ["--model", "{scripted.ts}"],
        ["--model", "{traced.pt}"],
        ["--model", "{dynamic.pt2}"],
        ["--model", "{fixed8.pt2}"],  # batches of 20 (and the last of 8) run as chunks of 8, padded
        ["--model", "{bounded.pt2}"],
        ["--model", "fastadv.models:small_cnn", "--weights", "{weights.pth}"],
        ["--model", "fastadv.models:small_cnn", "--weights", "{weights.safetensors}"],
        ["--model", "fastadv.models:small_cnn", "--weights", "{ddp_checkpoint.pt}", "--num-classes", "10"],
    ],
    ids=FORMAT_NAMES,
)
def test_every_format_gives_the_native_report(saved, model_args):
    root, native = saved
    args = [re.sub(r"\{([^{}]+)\}", lambda m: str(root / m.group(1)), a) for a in model_args]
    report = _eval(root, "x", *args)
    assert report["samples"] == 48 and native["clean_accuracy"] > 0.9 and native["attacks"][0]["success_rate"] > 0
    assert _numbers(report) == _numbers(native)
    got, expected = _calibration(report), _calibration(native)
    assert [v is None for v in got] == [v is None for v in expected]
    assert [v for v in got if v is not None] == pytest.approx([v for v in expected if v is not None], rel=1e-5)
    assert report["model"] == args[1] and report.get("weights") == (args[3] if "--weights" in args else None)


@pytest.mark.parametrize("name, low, high", [("fixed8.pt2", 8, 8), ("bounded.pt2", 3, 6), ("dynamic.pt2", 1, None)])
def test_exported_programs_take_any_batch_size_with_the_gradients_of_the_model(saved, digits_model, name, low, high):
    model, x, _ = digits_model
    loaded = models.load(str(saved[0] / name))
    assert isinstance(loaded, ExportedModel) and (loaded.low, loaded.high) == (low, high)
    assert not loaded.training and loaded.train().training and not loaded.eval().training  # its own flag only
    for batch in (0, 1, 2, 5, 8, 9, 17):
        images = x[:batch].clone().requires_grad_(True)
        expected_images = x[:batch].clone().requires_grad_(True)
        logits, expected = loaded(images), model(expected_images)
        assert logits.shape == (batch, 10)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        if batch:
            (grad,) = torch.autograd.grad(logits.logsumexp(1).sum(), images)
            (expected_grad,) = torch.autograd.grad(expected.logsumexp(1).sum(), expected_images)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_load_reads_the_format_from_the_contents_and_keeps_the_weights(saved, digits_model):
    model, x, _ = digits_model
    root = saved[0]
    expected = model(x[:5])
    for spec, weights in [("scripted.ts", None), ("traced.pt", None), ("dynamic.pt2", None), ("native.pt", None),
                          ("fastadv.models:small_cnn", "weights.safetensors")]:  # fmt: skip
        path = spec if ":" in spec else str(root / spec)
        loaded = models.load(path, None if weights is None else root / weights)
        assert not loaded.training
        torch.testing.assert_close(loaded(x[:5]), expected, rtol=1e-5, atol=1e-5)
        assert models.check_logits(loaded, x[:2], 10) == 10
    with pytest.raises(ValueError, match="weights: given with .*native.pt, which is a torch.save file"):
        models.load(root / "native.pt", root / "weights.pth")
    with pytest.raises(ValueError, match="num_classes: given with .*scripted.ts, which is a TorchScript archive"):
        models.load(root / "scripted.ts", num_classes=10)
    with pytest.raises(ModelError, match="returns 10 classes, expected num_classes = 7"):
        models.check_logits(model, x[:2], 7)


def test_mean_std_is_the_attacks_own_normalization(digits_model):
    model, x, y = digits_model
    mean, std = [0.2], [0.4]
    wrapped = Normalized(model, mean, std)
    expected = FGSM(model, eps=0.1, mean=mean, std=std).run(x[:32], y[:32])
    result = FGSM(wrapped, eps=0.1).run(x[:32], y[:32])
    assert torch.equal(result.adv, expected.adv) and torch.equal(result.success, expected.success)
    assert set(wrapped.state_dict()) >= {"mean", "std"}  # in the fingerprint a resumed evaluation checks
    with pytest.raises(ValueError, match="mean and std have 3 values but the images have shape"):
        Normalized(model, [0.1, 0.2, 0.3], [1, 1, 1])(x[:2])
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalized(model, 0.5, 0)


def test_torchvision_resnet18_with_num_classes_mean_std_and_local_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.random((4, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, 4))
    out = tmp_path / "out"
    argv = ["eval", "--model", "torchvision.models:resnet18", "--weights", str(tmp_path / "resnet18.pth"),
            "--num-classes", "10", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225",
            "--data", str(tmp_path / "rgb.npz"), "--out", str(out), *EVAL]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 4 and report["mean"] == [0.485, 0.456, 0.406] and report["std"][2] == 0.225
    # the same numbers from Python, with the attacks' own normalization
    loaded = models.load("torchvision.models:resnet18", tmp_path / "resnet18.pth", num_classes=10)
    data = np.load(tmp_path / "rgb.npz")
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    clean = loaded((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).argmax(1)
    assert report["clean_accuracy"] == float((clean == y).float().mean())


@pytest.mark.filterwarnings("ignore::fastadv.models.RandomWeightsWarning")
def test_factories_get_no_pretrained_weights_and_never_download():
    random = {"allow_random_weights": True}  # (the factories' own initialisation is what is checked)
    factories = "support.model_factories"
    model = models.load(f"{factories}:records", num_classes=7, **random)
    assert model.called_with == {"pretrained": False, "weights": None, "num_classes": 7}
    assert models.load(f"{factories}:records_kwargs", num_classes=3, **random).called_with == {"num_classes": 3}
    assert models.load(f"{factories}:no_classes", num_classes=3, **random)(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ModelError, match="tried to download https://download.example/weights.pth; fastadv never"):
        models.load(f"{factories}:downloads", **random)

    assert torch.hub.download_url_to_file.__name__ == "download_url_to_file"  # given back


@pytest.mark.filterwarnings("ignore::fastadv.models.RandomWeightsWarning")
def test_timm_names_call_create_model_without_pretrained_weights(tmp_path, monkeypatch):
    (tmp_path / "timm.py").write_text(
        "import torch\n"
        "def create_model(model_name, pretrained=True, **kwargs):\n"
        "    model = torch.nn.Linear(4, kwargs.get('num_classes', 1000))\n"
        "    model.called_with = dict(model_name=model_name, pretrained=pretrained, **kwargs)\n"
        "    return model\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "timm", raising=False)
    model = models.load("timm:resnet18", num_classes=10, allow_random_weights=True)
    assert model.called_with == {"model_name": "resnet18", "pretrained": False, "num_classes": 10}


def test_timm_missing_says_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed (import raises)
    with pytest.raises(ModelError, match=r"timm:resnet18: cannot import timm: .* \(pip install timm\)"):
        models.load("timm:resnet18")


def test_programs_exported_in_train_mode_or_with_two_inputs_are_refused(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    example = torch.rand(4, 1, 16, 16)
    torch.export.save(_export(net.train(), example, torch.export.Dim("b")), str(tmp_path / "train.pt2"))
    with pytest.raises(ModelError, match=r"train.pt2: exported in train mode \(aten.batch_norm.default uses"):
        models.load(tmp_path / "train.pt2")
    torch.export.save(_export(net.eval(), example, torch.export.Dim("b")), str(tmp_path / "eval.pt2"))
    assert models.load(tmp_path / "eval.pt2")(torch.rand(3, 1, 16, 16)).shape == (3, 10)

    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    torch.export.save(torch.export.export(Two(), (example, example)), str(tmp_path / "two.pt2"))
    with pytest.raises(ModelError, match="a torch.export program with 2 inputs; expected one"):
        models.load(tmp_path / "two.pt2")
