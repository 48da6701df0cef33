"""The attacks' API as one: which options each attack takes and the one error for the others."""

import pytest
from attack_helpers import digits_model

import fastadv
from fastadv.attacks.base import GRADIENT_OPTIONS, OPTIONS


@pytest.fixture(scope="module")
def digits():
    model, x, y = digits_model()
    return model, x[:32], y[:32]


# (attack, an option it does not take, its value): one message format for all, from the root class
UNSUPPORTED = [
    (fastadv.FGSM, "steps", 3),
    (fastadv.APGD, "early_stop_every", 2),
    (fastadv.APGD, "cuda_graph", False),
    (fastadv.APGD, "alpha", 0.1),
    (fastadv.APGDT, "targeted", False),
    (fastadv.APGDT, "cuda_graph", True),
    (fastadv.CW, "early_stop", False),
    (fastadv.CW, "cuda_graph", True),
    (fastadv.CW, "restarts", 2),
    (fastadv.DeepFool, "targeted", True),
    (fastadv.DeepFool, "early_stop", True),
    (fastadv.DeepFool, "cuda_graph", True),
    (fastadv.JSMA, "early_stop", True),
    (fastadv.JSMA, "restarts", 2),
    (fastadv.PGD, "n_restarts", 2),
    (fastadv.PGD, "epsilon", 0.1),
]


@pytest.mark.parametrize("cls, name, value", UNSUPPORTED, ids=[f"{c.__name__}-{n}" for c, n, _ in UNSUPPORTED])
def test_an_unsupported_option_fails_with_one_message(digits, cls, name, value):
    with pytest.raises(fastadv.UnsupportedOption) as error:
        cls(digits[0], **{name: value})
    assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)
    assert str(error.value).startswith(f"{name}: {cls.__name__} does not take this option")
    assert str(error.value).endswith(f"its options are {', '.join(cls.supported_options)}")


@pytest.mark.parametrize(
    "cls, options, mode",
    [
        (fastadv.FGSM, GRADIENT_OPTIONS, ["default", "targeted"]),
        (fastadv.PGD, GRADIENT_OPTIONS, ["default", "targeted"]),
        (fastadv.PGDL2, GRADIENT_OPTIONS, ["default", "targeted"]),
        (fastadv.MIFGSM, GRADIENT_OPTIONS, ["default", "targeted"]),
        (fastadv.APGD, OPTIONS, ["default", "targeted"]),
        (fastadv.APGDT, set(OPTIONS) - {"targeted"}, ["default"]),
        (fastadv.CW, set(OPTIONS) - {"early_stop"}, ["default", "targeted"]),
        (fastadv.DeepFool, set(OPTIONS) - {"targeted", "early_stop"}, ["default"]),
        (fastadv.JSMA, set(OPTIONS) - {"early_stop"}, ["default", "targeted"]),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_each_attack_declares_what_it_supports(digits, cls, options, mode):
    assert set(cls.supported_options) == set(options)
    attack = cls(digits[0])
    assert attack.supported_mode == mode, "torchattacks' supported_mode"
    assert set(cls.unsupported_because) <= set(GRADIENT_OPTIONS) - set(options) | {"steps", "alpha", "random_start"}
