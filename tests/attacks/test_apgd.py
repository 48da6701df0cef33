"""APGD, APGD-T and AutoAttackLite: strength against PGD and torchattacks on the digits CNN, the step-size
schedule, early stopping, bad input, and the cascade in evaluate (fastadv eval's: app/test_cli.py; model
safety: test_attack_safety.py, for every attack)."""

import re

import pytest
import torch
from support.models import CountingModel, accuracy

import fastadv
from fastadv.attacks.apgd import checkpoints
from fastadv.attacks.autoattack import AutoAttackLite
from fastadv.evaluation import evaluate

pytestmark = pytest.mark.slow  # APGD's checkpoints, strength and the comparison with torchattacks


@pytest.fixture(scope="module")
def digits(digits_model):
    return digits_model


def test_checkpoints_follow_the_paper():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then past 1) of 100 iterations
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


@pytest.mark.slow
def test_apgd_ce_is_at_least_as_strong_as_pgd20(digits):
    model, x, y = digits
    pgd = fastadv.PGD(model, eps=0.1, alpha=0.0125, steps=20, generator=torch.Generator().manual_seed(1)).run(x, y)
    apgd = fastadv.APGD(model, eps=0.1, steps=20, loss="ce").run(x, y)
    assert 1 - apgd.success_rate <= 1 - pgd.success_rate + 0.01
    assert abs(accuracy(model, apgd.adv, y) - (1 - apgd.success_rate)) < 1e-6
    assert (apgd.adv - x).abs().max() <= 0.1 + 1e-6 and apgd.adv.min() >= 0 and apgd.adv.max() <= 1


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("APGD", {"norm": "Linf", "eps": 0.1, "loss": "ce"}),
        ("APGD", {"norm": "Linf", "eps": 0.1, "loss": "dlr"}),
        ("APGD", {"norm": "L2", "eps": 1.0, "loss": "ce"}),
        ("APGDT", {"norm": "Linf", "eps": 0.05, "n_classes": 4}),
    ],
    ids=["ce", "dlr", "l2", "apgdt"],
)
def test_as_strong_as_torchattacks_when_installed(digits, name, kwargs):
    """The same algorithm from other random starts (torchattacks seeds the global generator):
    the robust accuracy agrees to a few samples of 256."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    x, y = x[:256], y[:256]
    theirs = getattr(torchattacks, name)(model, steps=10, n_restarts=1, seed=0, **kwargs)(x, y)
    ours = getattr(fastadv, name)(model, steps=10, n_restarts=1, seed=0, **kwargs)(x, y)
    assert abs(accuracy(model, ours, y) - accuracy(model, theirs, y)) <= 0.025
    eps = kwargs["eps"] * (1 + 1e-5)
    distance = (ours - x).flatten(1).abs().amax(1) if kwargs["norm"] == "Linf" else (ours - x).flatten(1).norm(dim=1)
    assert distance.max() <= eps and ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("kwargs", [{"loss": "dlr"}, {"norm": "L2", "eps": 1.5}])
def test_apgd_dlr_and_l2_degrade_accuracy(digits, kwargs):
    model, x, y = digits
    result = fastadv.APGD(model, **{"eps": 0.1, "steps": 20, **kwargs}).run(x, y)
    assert 1 - result.success_rate < 0.3
    if kwargs.get("norm") == "L2":
        assert (result.adv - x).flatten(1).norm(dim=1).max() <= 1.5 * (1 + 1e-5)


def test_apgd_t_finds_what_apgd_ce_misses(digits):
    model, x, y = digits
    ce = fastadv.APGD(model, eps=0.1, steps=20).run(x, y)
    survivors = ~ce.success
    targeted = fastadv.APGDT(model, eps=0.1, steps=20, n_target_classes=3).run(x[survivors], y[survivors])
    assert targeted.success.any(), "APGD-T should fool some samples that APGD-CE did not"
    with torch.no_grad():
        assert torch.equal(model(targeted.adv).argmax(1) != y[survivors], targeted.success)


def test_apgd_early_stop_same_successes_fewer_evaluations(digits):
    model, x, y = digits
    runs = {}
    for early in (False, True):
        counted = CountingModel(model)
        runs[early] = (fastadv.APGD(counted, eps=0.1, steps=20, early_stop=early).run(x, y), counted.samples)
    assert torch.equal(runs[True][0].success, runs[False][0].success)
    assert runs[True][1] < 0.5 * runs[False][1]


def test_apgd_same_seed_same_output(digits):
    model, x, y = digits
    a = fastadv.APGD(model, eps=0.1, steps=5, seed=3)(x[:32], y[:32])
    assert torch.equal(a, fastadv.APGD(model, eps=0.1, steps=5, seed=3)(x[:32], y[:32]))
    assert not torch.equal(a, fastadv.APGD(model, eps=0.1, steps=5, seed=4)(x[:32], y[:32]))


@pytest.mark.parametrize(
    "cls, kwargs, part",
    [
        (fastadv.APGD, {"norm": "L1"}, "norm"),
        (fastadv.APGD, {"rho": 0}, "rho"),
        (fastadv.APGD, {"loss": "kl"}, "loss"),
        (fastadv.APGD, {"seed": "x"}, "seed"),
        (fastadv.APGD, {"eot_iter": 0}, "eot_iter"),
        (fastadv.APGDT, {"targeted": True}, "targeted"),
        (fastadv.APGDT, {"n_target_classes": 0}, "n_target_classes"),
    ],
)
def test_apgd_bad_arguments(digits, cls, kwargs, part):
    with pytest.raises((ValueError, TypeError), match=part):
        cls(digits[0], **kwargs)


def test_eot_iter_takes_the_mean_of_several_gradients(digits):
    model, x, y = digits
    x, y = x[:64], y[:64]
    one = fastadv.APGD(model, eps=0.1, steps=5).run(x, y)
    counted = CountingModel(model)
    two = fastadv.APGD(counted, eps=0.1, steps=5, eot_iter=2).run(x, y)
    # a deterministic model: the mean of two equal gradients is the gradient itself
    assert torch.equal(one.adv, two.adv) and torch.equal(one.success, two.success)
    assert counted.samples == 2 * (1 + 5) * 64, "two forward and backward passes at the start and at every step"


def test_apgd_t_takes_torchattacks_n_classes(digits):
    assert fastadv.APGDT(digits[0], n_classes=10).n_target_classes == 9
    assert fastadv.APGDT(digits[0], n_classes=4, n_restarts=2).restarts == 6
    with pytest.raises(ValueError, match="n_classes"):
        fastadv.APGDT(digits[0], n_classes=1)
    with pytest.raises(ValueError, match="loss"):
        fastadv.APGDT(digits[0], loss="ce")


def test_apgd_t_needs_four_classes():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="4 classes"):
        fastadv.APGDT(model, eps=0.1, steps=2)(torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))


def test_cascade_apgd_ce_then_apgd_t_in_evaluate(digits):
    model, x, y = digits
    report = evaluate(model, (x[:128], y[:128]), ["apgd-ce", "apgd-t"], [0.1], steps=10, progress=False)
    ce, t = report["attacks"]
    assert t["samples_attacked"] == round(ce["robust_accuracy"] * 128), "APGD-T ran on APGD-CE's survivors only"
    assert t["robust_accuracy"] <= ce["robust_accuracy"]


class _BatchSizes(torch.nn.Module):
    """Records the batch size of every forward call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.inner(x)


def test_autoattack_lite_stages_and_log(digits):
    model, x, y = digits
    recorder = _BatchSizes(model)
    lines = []
    attack = AutoAttackLite(recorder, eps=0.1, steps=10, n_target_classes=3, log=lines.append)
    result = attack.run(x[:200], y[:200], batch_size=128)
    ce, t = result.stages
    assert (ce.name, t.name) == ("apgd-ce", "apgd-t")
    assert ce.attacked == round(result.clean_accuracy * 200)
    assert t.attacked == ce.attacked - ce.fooled, "APGD-T attacks APGD-CE's survivors only"
    # the second stage: one pass ranking the survivors' target classes, then runs of (survivor,
    # target) pairs, as many targets side by side as batch_size allows (APGDT's target_batch),
    # each run a start and 10 steps on pairs that only shrink (no forward at the end: a run keeps
    # the class it saw at its best point)
    group = min(3, 128 // t.attacked)
    runs = -(-3 // group)
    second = recorder.sizes[-(1 + runs * 11) :]
    assert second[0] == t.attacked and second[1] == group * t.attacked and max(second[1:]) <= 128
    assert all(a >= b for a, b in zip(second[1:12], second[2:12], strict=False)), "pairs leave, none come back"
    assert max(recorder.sizes[: -len(second)]) > t.attacked
    assert result.robust_accuracy == pytest.approx(accuracy(model, result.adv, y[:200]), abs=1e-9)
    assert result.robust_accuracy == t.robust_accuracy <= ce.robust_accuracy
    assert (result.adv - x[:200]).abs().max() <= 0.1 + 1e-6
    assert torch.equal(result.adv[result.robust], x[:200][result.robust])
    expected = [
        r"using lite version including apgd-ce, apgd-t\.",
        r"initial accuracy: \d+\.\d\d%",
        r"apgd-ce - 1/2 - \d+ out of 128 successfully perturbed",
        rf"apgd-ce - 2/2 - \d+ out of {ce.attacked - 128} successfully perturbed",
        r"robust accuracy after APGD-CE: \d+\.\d\d% \(total time \d+\.\d s\)",
        rf"apgd-t - 1/1 - {t.fooled} out of {t.attacked} successfully perturbed",
        r"robust accuracy after APGD-T: \d+\.\d\d% \(total time \d+\.\d s\)",
        r"max Linf perturbation: 0\.1\d+, nan in tensor: 0, max: \d\.\d{5}, min: \d\.\d{5}",
        rf"robust accuracy: {result.robust_accuracy:.2%}",
    ]
    assert len(lines) == len(expected)
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    again = AutoAttackLite(model, eps=0.1, steps=10, n_target_classes=3, log=None)
    assert torch.equal(again.run_standard_evaluation(x[:200], y[:200], bs=128), result.adv), "seeded: repeatable"


@pytest.mark.parametrize(
    "kwargs, error, part",
    [
        ({"norm": "L1"}, ValueError, "norm"),
        ({"eps": -1.0}, ValueError, "eps"),
        ({"steps": 0}, ValueError, "steps"),
        ({"log": "stdout"}, TypeError, "log"),
        ({"targeted": True}, ValueError, "targeted"),
    ],
)
def test_autoattack_lite_bad_arguments(digits, kwargs, error, part):
    with pytest.raises(error, match=part):
        AutoAttackLite(digits[0], **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        AutoAttackLite(digits[0], log=None).run(digits[1][:4], digits[2][:4], batch_size=0)


@pytest.mark.parametrize("kwargs", [{"early_stop_every": 2}, {"cuda_graph": True}])
def test_apgd_refuses_the_options_its_schedule_cannot_take(digits, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        fastadv.APGD(digits[0], **kwargs)
