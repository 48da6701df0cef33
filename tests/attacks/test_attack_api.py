"""The attacks' API as one: which options each attack takes and the one error for the others,
norm names, torchattacks' argument names and order (APGD, APGDT), and verbose."""

import inspect

import pytest
import torch
from support.models import GammaModel

import fastadv
from fastadv import checks as check
from fastadv.attacks.base import GRADIENT_OPTIONS, OPTIONS


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
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
        (fastadv.FAB, set(OPTIONS) - {"early_stop"}, ["default", "targeted"]),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_each_attack_declares_what_it_supports(digits, cls, options, mode):
    assert set(cls.supported_options) == set(options)
    attack = cls(digits[0])
    assert attack.supported_mode == mode, "torchattacks' supported_mode"
    assert set(cls.unsupported_because) <= set(GRADIENT_OPTIONS) - set(options) | {"steps", "alpha", "random_start"}


@pytest.mark.parametrize("spelling, norm", [("Linf", "linf"), ("linf", "linf"), ("L2", "l2"), ("l2", "l2")])
def test_both_norm_spellings_everywhere(digits, spelling, norm):
    model, x, y = digits
    assert check.norm(spelling) == norm
    for cls in (fastadv.APGD, fastadv.APGDT):
        assert cls(model, norm=spelling).norm == norm
    eps = 0.1 if norm == "linf" else 1.0
    gen = torch.Generator()
    gen.manual_seed(0)
    expected = fastadv.pgd(model, x, y, eps=eps, norm=norm, steps=3, generator=gen)
    gen.manual_seed(0)
    assert torch.equal(fastadv.pgd(model, x, y, eps=eps, norm=spelling, steps=3, generator=gen), expected)
    expected = fastadv.APGD(model, norm=norm, eps=eps, steps=3)(x, y)
    assert torch.equal(fastadv.APGD(model, norm=spelling, eps=eps, steps=3)(x, y), expected)


@pytest.mark.parametrize("bad", ["L1", "inf", None, 2])
def test_a_bad_norm_is_named(digits, bad):
    with pytest.raises(ValueError, match="norm"):
        check.norm(bad)
    with pytest.raises(ValueError, match="norm"):
        fastadv.APGD(digits[0], norm=bad)
    with pytest.raises(ValueError, match="norm"):
        fastadv.pgd(digits[0], digits[1], digits[2], eps=0.1, norm=bad)


@pytest.mark.parametrize("cls", [fastadv.APGD, fastadv.APGDT])
def test_restarts_and_n_restarts_are_one_argument(digits, cls):
    model, x, y = digits
    kwargs = {"eps": 0.05, "steps": 3} if cls is fastadv.APGD else {"eps": 0.05, "steps": 3, "n_classes": 3}
    by_torchattacks_name = cls(model, n_restarts=2, **kwargs)
    by_fastadv_name = cls(model, restarts=2, **kwargs)
    assert by_torchattacks_name.n_restarts == by_fastadv_name.n_restarts == 2
    assert by_torchattacks_name.restarts == by_fastadv_name.restarts
    assert cls(model).n_restarts == 1
    assert torch.equal(by_torchattacks_name(x, y), by_fastadv_name(x, y))
    with pytest.raises(ValueError, match="n_restarts and restarts"):
        cls(model, n_restarts=2, restarts=2)
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        cls(model, restarts=0)
    with pytest.raises(ValueError, match="n_restarts must be >= 1"):
        cls(model, n_restarts=0)


@pytest.mark.parametrize("name", ["APGD", "APGDT", "Square"])
def test_positional_order_and_defaults_are_torchattacks(digits, name):
    torchattacks = pytest.importorskip("torchattacks")
    theirs = inspect.signature(getattr(torchattacks, name)).parameters
    ours = inspect.signature(getattr(fastadv, name)).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    attack = getattr(fastadv, name)(digits[0])
    effective = {"n_restarts": attack.n_restarts, "n_classes": getattr(attack, "n_target_classes", 0) + 1}
    for param in theirs.values():
        if param.default is not inspect.Parameter.empty:
            default = ours[param.name].default
            assert (effective[param.name] if default is None else default) == param.default, param.name


def test_apgdt_takes_torchattacks_positional_arguments(digits):
    model, x, y = digits
    # torchattacks.APGDT(model, norm, eps, steps, n_restarts, seed, eot_iter, rho, verbose, n_classes)
    attack = fastadv.APGDT(model, "L2", 1.0, 5, 2, 3, 1, 0.5, False, 4)
    assert (attack.norm, attack.eps, attack.steps, attack.n_restarts, attack.seed) == ("l2", 1.0, 5, 2, 3)
    assert (attack.eot_iter, attack.rho, attack.verbose, attack.n_target_classes) == (1, 0.5, False, 3)
    assert attack.restarts == 2 * 3
    with pytest.raises(ValueError, match="n_target_classes and n_classes"):
        fastadv.APGDT(model, n_classes=4, n_target_classes=3)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [fastadv.APGD, fastadv.APGDT])
def test_verbose_prints_each_restart(digits, cls, capsys):
    model, x, y = digits
    quiet = cls(model, eps=0.05, steps=3, n_restarts=2)(x, y)
    assert capsys.readouterr().out == ""
    loud = cls(model, eps=0.05, steps=3, n_restarts=2, verbose=True)(x, y)
    lines = capsys.readouterr().out.splitlines()
    assert torch.equal(loud, quiet) and 1 <= len(lines) <= cls(model, n_restarts=2).restarts
    for index, line in enumerate(lines):
        assert line.startswith(f"restart {index} - robust accuracy: ") and " - cum. time: " in line
    with pytest.raises(TypeError, match="verbose"):
        cls(model, verbose="yes")


IGNORING = [
    lambda m: fastadv.PGD(m, eps=0.1, alpha=0.02, steps=2),
    lambda m: fastadv.FGSM(m, eps=0.1),
    lambda m: fastadv.PGDL2(m, eps=1.0, alpha=0.2, steps=2),
    lambda m: fastadv.APGD(m, eps=0.1, steps=2),
    lambda m: fastadv.DeepFool(m, steps=2),
    lambda m: fastadv.CW(m, steps=2),
    lambda m: fastadv.JSMA(m),
    lambda m: fastadv.FAB(m, steps=2),
    lambda m: fastadv.FAB(m, steps=2, multi_targeted=True, n_classes=3),
]


@pytest.mark.parametrize(
    "make", IGNORING, ids=["PGD", "FGSM", "PGDL2", "APGD", "DeepFool", "CW", "JSMA", "FAB", "FAB-T"]
)
@pytest.mark.parametrize("kind", ["module", "callable"])
def test_a_model_that_ignores_its_input_is_an_error(digits, make, kind):
    """a plain function that detaches its input (its network's parameters still
    require grad, so the output has a graph) fails like an nn.Module doing it."""
    model, x, y = digits

    class Detaching(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, t):
            return self.net(t.detach())

    wrapped = Detaching() if kind == "module" else (lambda t: model(t.detach()))
    with pytest.raises(ValueError, match="output does not depend on the images"):
        make(wrapped).run(x[:8], y[:8])
    with pytest.raises(ValueError, match="output does not depend on the images"):
        make(wrapped)(x[:8], y[:8])


NON_FINITE = [
    lambda m: fastadv.PGDL2(m, eps=1.0, alpha=0.25, steps=5),
    lambda m: fastadv.PGDL2(m, eps=1.0, alpha=0.25, steps=5, early_stop=True, restarts=2),
    lambda m: fastadv.APGD(m, norm="L2", eps=1.0, steps=5),
    lambda m: fastadv.DeepFool(m, steps=5),
]


@pytest.mark.parametrize("make", NON_FINITE, ids=["PGDL2", "PGDL2-early-stop", "APGD-L2", "DeepFool"])
def test_a_non_finite_candidate_never_fools(digits, make):
    """a model with infinite input gradients made the L2 attacks return NaN
    images that counted as fooled (class 0). Returned images are finite, success is the model's
    verdict on them, and non_finite marks the samples whose candidate was discarded."""
    model, x, y = digits
    gamma = GammaModel(model)
    result = make(gamma).run(x, y)
    assert bool(result.adv.isfinite().all()) and bool(make(gamma)(x, y).isfinite().all())
    with torch.no_grad():
        predicted = gamma(result.adv).argmax(1)
    assert torch.equal(result.predicted, predicted)
    assert torch.equal(result.success, predicted != y)
    assert result.non_finite.dtype == torch.bool and result.non_finite.shape == y.shape
    if isinstance(make(gamma), fastadv.DeepFool):  # its step is computed here, not by a kernel
        assert bool(result.non_finite.any())
        assert torch.equal(result.adv[result.non_finite], x[result.non_finite])  # the clean image


@pytest.mark.parametrize("bad", ["empty", "labels"])
def test_autoattack_lite_checks_its_batch_as_the_attacks_do(digits, bad):
    """an empty batch or labels out of range reported 0% robust."""
    model, x, y = digits
    images, labels, text = (x[:0], y[:0], "empty batch") if bad == "empty" else (x[:4], y[:4] + 10, "labels must lie")
    with pytest.raises(ValueError, match=text):
        fastadv.AutoAttackLite(model, eps=0.1, steps=2, log=None).run(images, labels)


PER_SAMPLE = [
    lambda m, e: fastadv.PGD(m, eps=e, alpha=e / 4, steps=2, random_start=False),
    lambda m, e: fastadv.PGDL2(m, eps=e * 10, alpha=e, steps=2, random_start=False),
    lambda m, e: fastadv.FGSM(m, eps=e),
    lambda m, e: fastadv.MIFGSM(m, eps=e, alpha=e / 4, steps=2),
    lambda m, e: fastadv.APGD(m, eps=e, steps=2),
]


@pytest.mark.parametrize("make", PER_SAMPLE, ids=["PGD", "PGDL2", "FGSM", "MIFGSM", "APGD"])
def test_eps_of_shape_b_1_is_per_sample(digits, make):
    """eps of shape [B, 1] (fewer dims than the images) failed with a broadcasting
    error; it is one eps per sample, as [B]. Other shapes get the ops' message."""
    model, x, y = digits
    eps = torch.linspace(0.02, 0.1, 8)
    expected = make(model, eps)(x[:8], y[:8])
    assert torch.equal(make(model, eps.view(8, 1))(x[:8], y[:8]), expected)
    with pytest.raises(ValueError, match=r"eps has shape \(8, 2\)"):
        make(model, torch.full((8, 2), 0.05))(x[:8], y[:8])
