"""TorchScript models (scripted and traced) and torch.export programs with buffers (BatchNorm's
running statistics and num_batches_tracked) go through every attack the package exports and
through `fastadv eval`, and come back as they were: training flags, requires_grad, buffers
(a ScriptModule's `_buffers` has no `.get`, and every attack failed on it)."""

import inspect
import warnings

import numpy as np
import pytest
import torch
from support.model_state import assert_unchanged, snapshot
from support.models import trained_batchnorm_cnn
from torch import nn

import fastadv
from fastadv.__main__ import main

EPS = 0.1

# Every attack class of fastadv's public API, with budgets small enough for a quick run.
ATTACKS = {
    "FGSM": lambda m: fastadv.FGSM(m, eps=EPS),
    "PGD": lambda m: fastadv.PGD(m, eps=EPS, alpha=0.04, steps=3),
    "PGDL2": lambda m: fastadv.PGDL2(m, eps=1.0, alpha=0.4, steps=3),
    "MIFGSM": lambda m: fastadv.MIFGSM(m, eps=EPS, alpha=0.04, steps=3),
    "APGD": lambda m: fastadv.APGD(m, eps=EPS, steps=3),
    "APGDT": lambda m: fastadv.APGDT(m, eps=EPS, steps=3, n_target_classes=2),
    "CW": lambda m: fastadv.CW(m, steps=3),
    "DeepFool": lambda m: fastadv.DeepFool(m, steps=3),
    "JSMA": lambda m: fastadv.JSMA(m, gamma=0.05),
    "FAB": lambda m: fastadv.FAB(m, eps=EPS, steps=2),
    "Square": lambda m: fastadv.Square(m, eps=EPS, n_queries=3),
    "AutoAttack": lambda m: fastadv.AutoAttack(m, eps=EPS, version="standard", steps=2, n_queries=3, log=None),
    "AutoAttackLite": lambda m: fastadv.AutoAttackLite(m, eps=EPS, steps=2, n_target_classes=2, log=None),
}


def _as(form: str, model: nn.Module, example: torch.Tensor):
    with warnings.catch_warnings():  # torch.jit.* are deprecated in favour of torch.export
        warnings.simplefilter("ignore")
        if form == "scripted":
            return torch.jit.script(model)
        if form == "traced":
            return torch.jit.trace(model, example)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        return program if form == "exported-program" else program.module()


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=generator), torch.randint(0, 10, (6,), generator=generator)


def test_every_exported_attack_class_is_covered():
    classes = {name for name in fastadv.__all__
               if inspect.isclass(getattr(fastadv, name)) and name not in ("Attack", "AttackResult", "GradientAttack",
                                                                           "UnsupportedOption")}  # fmt: skip
    assert classes == set(ATTACKS)


def _check_result(name, adv, images):
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert bool(torch.isfinite(adv).all()) and float(adv.min()) >= 0 and float(adv.max()) <= 1
    if name not in ("PGDL2", "CW", "DeepFool", "JSMA"):  # (minimal-norm and L2 attacks: no Linf ball)
        assert float((adv - images).abs().max()) <= EPS + 1e-6


@pytest.mark.parametrize("form", ["scripted", "traced"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_torchscript_model_state_guarded(form, name):
    model = _as(form, trained_batchnorm_cnn(), torch.rand(2, 3, 8, 8))
    model.train()  # a caller's model in train mode, with one module in eval: both must come back
    getattr(model.features, "1").eval()
    model.head.weight.requires_grad_(False)
    images, labels = _inputs()
    before = snapshot(model)
    assert int(dict(model.named_buffers())["features.1.num_batches_tracked"]) == 3
    _check_result(name, ATTACKS[name](model)(images, labels), images)
    assert_unchanged(model, before)


@pytest.mark.parametrize("form", ["scripted", "traced"])
def test_torchscript_train_mode_statistics_restored(form):
    """model_mode='train': BatchNorm's statistics move during the attack (scripted) and are
    written back; the module objects' buffers are the same tensors afterwards."""
    model = _as(form, trained_batchnorm_cnn(), torch.rand(2, 3, 8, 8))
    images, labels = _inputs()
    before = snapshot(model)
    result = fastadv.PGD(model, eps=EPS, alpha=0.04, steps=3, model_mode="train").run(images, labels)
    assert result.success is not None
    assert_unchanged(model, before)


@pytest.mark.parametrize("form", ["exported-program", "exported-module"])
@pytest.mark.parametrize("name", ["FGSM", "PGD", "APGD", "Square", "AutoAttack"])
def test_exported_program_attacked(form, name):
    """An ExportedProgram (not callable itself) and its module() (whose eval() raises) are
    attacked as exported; their buffers stay as they were."""
    exported = _as(form, trained_batchnorm_cnn(), torch.rand(2, 3, 8, 8))
    module = exported.module() if form == "exported-program" else exported
    images, labels = _inputs()
    before = snapshot(module)
    with torch.no_grad():
        clean = trained_batchnorm_cnn()(images).argmax(1)
    attack = ATTACKS[name](exported if form == "exported-program" else module)
    adv = attack(images, labels)
    _check_result(name, adv, images)
    if form == "exported-module":
        assert_unchanged(module, before)
    assert torch.equal(attack.predict(images, labels) if hasattr(attack, "predict") else clean, clean)


def test_exported_module_refuses_train_mode():
    module = _as("exported-module", trained_batchnorm_cnn(), torch.rand(2, 3, 8, 8))
    images, labels = _inputs()
    with pytest.raises(ValueError, match="model_mode='train': the model is a torch.export program"):
        fastadv.PGD(module, eps=EPS, alpha=0.04, steps=2, model_mode="train")(images, labels)


@pytest.mark.slow
def test_torchvision_resnet18_scripted_and_traced():
    """A real CNN with 20 BatchNorm layers, random weights, 32x32 images."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.rand(2, 3, 32, 32)
    labels = torch.tensor([1, 2])
    for form in ("scripted", "traced"):
        model = _as(form, net, images)
        before = snapshot(model)
        adv = fastadv.PGD(model, eps=EPS, alpha=0.05, steps=2)(images, labels)
        _check_result("PGD", adv, images)
        assert_unchanged(model, before)


@pytest.mark.parametrize("form", ["scripted", "traced"])
def test_cli_eval_torchscript_batchnorm(form, tmp_path, capsys):
    model = trained_batchnorm_cnn()
    images, labels = torch.rand(12, 3, 8, 8), torch.randint(0, 10, (12,))
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(_as(form, model, images[:2]), str(path))
        saved = torch.jit.load(str(path))
    np.savez(tmp_path / "data.npz", x=images.numpy(), y=labels.numpy())
    argv = [
        "eval",
        "--model",
        str(path),
        "--data",
        str(tmp_path / "data.npz"),
        "--attacks",
        "fgsm,pgd",
        "--eps",
        "0.1",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "0",
        "--quiet",
        "--no-plots",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "report.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = torch.jit.load(str(path))  # the file is untouched
    for (k, a), (_, b) in zip(saved.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
