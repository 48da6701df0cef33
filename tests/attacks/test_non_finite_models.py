"""A model whose outputs on clean images are NaN or infinite has nothing to attack or score:
every attack, evaluate() and `fastadv eval` refuse it with one line ("the model's outputs are
not finite") instead of reporting numbers computed from argmax over NaN. Outputs
that turn non-finite only at some perturbed point stay the attacks' own business (their
`non_finite` flag, tests/attacks/test_apgd_non_finite.py)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fastadv
from fastadv.__main__ import main
from fastadv.evaluation import evaluate

MESSAGE = "the model's outputs are not finite"


class Scaled(nn.Module):
    """A linear model whose outputs are multiplied by `factor` (inf: every output infinite)."""

    def __init__(self, factor: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 10)
        self.factor = factor

    def forward(self, x):
        return self.linear(x.flatten(1)).abs() * self.factor


def _nan_weight() -> nn.Module:
    model = Scaled()
    with torch.no_grad():
        model.linear.weight[3, 5] = float("nan")  # one weight: every output row of class 3 is NaN
    return model


def _data(n: int = 8):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(0, 10, (n,), generator=generator)


ATTACKS = {
    "FGSM": lambda m: fastadv.FGSM(m, eps=0.1),
    "PGD": lambda m: fastadv.PGD(m, eps=0.1, alpha=0.05, steps=2),
    "PGDL2": lambda m: fastadv.PGDL2(m, eps=1.0, alpha=0.5, steps=2),
    "MIFGSM": lambda m: fastadv.MIFGSM(m, eps=0.1, alpha=0.05, steps=2),
    "APGD": lambda m: fastadv.APGD(m, eps=0.1, steps=2),
    "APGDT": lambda m: fastadv.APGDT(m, eps=0.1, steps=2, n_target_classes=2),
    "CW": lambda m: fastadv.CW(m, steps=2),
    "DeepFool": lambda m: fastadv.DeepFool(m, steps=2),
    "JSMA": lambda m: fastadv.JSMA(m, gamma=0.05),
    "FAB": lambda m: fastadv.FAB(m, eps=0.1, steps=2),
    "Square": lambda m: fastadv.Square(m, eps=0.1, n_queries=2),
    "AutoAttack": lambda m: fastadv.AutoAttack(m, eps=0.1, steps=2, n_queries=2, log=None),
}


@pytest.mark.parametrize("model", [_nan_weight, lambda: Scaled(float("inf"))], ids=["nan-weight", "inf-outputs"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_refuse_non_finite_model(name, model):
    x, y = _data()
    with pytest.raises(ValueError, match=MESSAGE):
        ATTACKS[name](model()).run(x, y)


def test_predict_refuses_non_finite_model():
    x, y = _data()
    with pytest.raises(ValueError, match=MESSAGE):
        fastadv.PGD(Scaled(float("inf")), eps=0.1).predict(x, y)


@pytest.mark.parametrize("model", [_nan_weight, lambda: Scaled(float("inf"))], ids=["nan-weight", "inf-outputs"])
def test_evaluate_refuses_non_finite_model(model):
    with pytest.raises(ValueError, match=MESSAGE + r" \(NaN or infinity\) for 8 of 8 clean images"):
        evaluate(model(), _data(), attacks=["fgsm"], eps=[0.1], progress=False)


class InfAtWhite(Scaled):
    """Infinite outputs for an image with a pixel at 1.0 (an overflow on some inputs only)."""

    def forward(self, x):
        white = x.flatten(1).amax(1, keepdim=True) >= 1.0
        return torch.where(white, float("inf"), super().forward(x))


def test_overflow_at_one_clean_image_named():
    """Only one clean image overflows the model: refused too, saying how many."""
    x, y = _data()
    x[2] = 1.0
    with pytest.raises(ValueError, match=MESSAGE + r" \(NaN or infinity\) for 1 of 8"):
        fastadv.PGD(InfAtWhite(), eps=0.1, alpha=0.05, steps=2, random_start=False).run(x, y)
    with pytest.raises(ValueError, match=MESSAGE + r" \(NaN or infinity\) for 1 of 8 clean images"):
        evaluate(InfAtWhite(), (x, y), attacks=["fgsm"], eps=[0.1], progress=False)


def test_finite_model_still_attacked():
    x, y = _data()
    result = fastadv.PGD(Scaled(), eps=0.1, alpha=0.05, steps=2).run(x, y)
    assert result.success is not None and bool(torch.isfinite(result.adv).all())


def test_cli_eval_nan_weight_torchscript(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_nan_weight()), str(tmp_path / "nan.ts"))
    x, y = _data(16)
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    argv = ["eval", "--model", str(tmp_path / "nan.ts"), "--data", str(tmp_path / "data.npz"), "--attacks", "fgsm",
            "--eps", "0.1", "--out", str(tmp_path / "out"), "--workers", "0", "--quiet", "--no-plots"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert MESSAGE in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "report.json").exists()
