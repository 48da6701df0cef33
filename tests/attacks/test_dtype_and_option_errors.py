"""Two errors that named the wrong thing: float16/bfloat16 images given to a float32
model raised torch's "Input type (c10::Half) and bias type (float) should be the same"; they are
refused naming the images and the fix (fastadv never casts the caller's images; amp= runs a
float32 model in half precision). `AutoAttack(model, foo=1)` said "APGD does not take this
option"; it names AutoAttack (and, for another attack's option, the stage that refuses it)."""

import pytest
import torch
from torch import nn

import fastadv

ATTACKS = {
    "PGD": lambda m: fastadv.PGD(m, eps=0.1, alpha=0.05, steps=2),
    "APGD": lambda m: fastadv.APGD(m, eps=0.1, steps=2),
    "CW": lambda m: fastadv.CW(m, steps=2),
    "DeepFool": lambda m: fastadv.DeepFool(m, steps=2),
    "FAB": lambda m: fastadv.FAB(m, eps=0.1, steps=2),
    "Square": lambda m: fastadv.Square(m, eps=0.1, n_queries=2),
    "AutoAttack": lambda m: fastadv.AutoAttack(m, eps=0.1, steps=2, n_queries=2, n_classes=3, log=None),
}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()


def _data(dtype=torch.float32):
    return torch.rand(4, 1, 4, 4).to(dtype), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_half_images_for_a_float32_model_named(name, dtype):
    x, y = _data(dtype)
    short = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"^images: {short} images for a model whose parameters are float32; give "):
        ATTACKS[name](_model())(x, y)


def test_half_images_for_a_half_model_and_amp_still_work():
    x, y = _data(torch.bfloat16)
    adv = fastadv.PGD(_model().to(torch.bfloat16), eps=0.1, alpha=0.05, steps=2)(x, y)
    assert adv.dtype == torch.bfloat16
    adv = fastadv.PGD(_model(), eps=0.1, alpha=0.05, steps=2, amp=torch.bfloat16)(*_data())
    assert adv.dtype == torch.float32


def test_other_model_errors_pass_through():
    x, y = _data()
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        fastadv.PGD(nn.Sequential(nn.Flatten(), nn.Linear(5, 3)), eps=0.1, alpha=0.05, steps=2)(x, y)


@pytest.mark.parametrize("cls", [fastadv.AutoAttack, fastadv.AutoAttackLite])
def test_autoattack_names_itself_for_an_unknown_option(cls):
    with pytest.raises(fastadv.UnsupportedOption, match=rf"^foo: {cls.__name__} does not take this option; its "):
        cls(_model(), foo=1)


def test_autoattack_names_the_stage_that_refuses_an_attack_option():
    with pytest.raises(fastadv.UnsupportedOption, match=r"^cuda_graph: AutoAttack does not take this option \(its "
                                                        r"APGD stage does not: APGD's step-size"):  # fmt: skip
        fastadv.AutoAttack(_model(), cuda_graph=True)
