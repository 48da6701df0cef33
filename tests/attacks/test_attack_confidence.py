"""Every attack's result carries the softmax probability of its `predicted` class (`confidence`),
and it is what a forward pass on the returned images gives: the same model, in the same mode, on
a BatchNorm CNN with moved running statistics. Each attack computes it in the forward pass that
decided `predicted` (a step, a query, the final iterate, or the clean pass), so an evaluation's
calibration error needs no pass of its own (counted below)."""

import inspect

import pytest
import torch
from support.models import BatchNormCNN
from torch import nn

import fastadv
from fastadv.defenses import JPEG, Defended

EPS = 0.02  # (most samples fooled, some not)

# Every attack class, in the settings that reach each place a result is taken from: a step,
# the final iterate, the best point of a run (APGD), restarts on survivors, early stopping's
# compaction, targets side by side (APGD-T's and FAB-T's target_batch, as AutoAttack sets it),
# FAB-T's rounds, Square's accepted queries, the minimal-norm attacks' best images, EOT, BPDA.
ATTACKS = {
    "FGSM": lambda m: fastadv.FGSM(m, eps=EPS),
    "FGSM-random-restarts": lambda m: fastadv.FGSM(m, eps=EPS, random_start=True, restarts=3),
    "PGD": lambda m: fastadv.PGD(m, eps=EPS, alpha=0.03, steps=4),
    "PGD-early-stop": lambda m: fastadv.PGD(m, eps=EPS, alpha=0.03, steps=5, early_stop=True, restarts=2),
    "PGD-targeted": lambda m: fastadv.PGD(m, eps=EPS, alpha=0.03, steps=4, targeted=True),
    "PGD-eot": lambda m: fastadv.PGD(m, eps=EPS, alpha=0.03, steps=3, eot_samples=2),
    "PGDL2": lambda m: fastadv.PGDL2(m, eps=0.3, alpha=0.1, steps=4),
    "MIFGSM": lambda m: fastadv.MIFGSM(m, eps=EPS, alpha=0.03, steps=4),
    "APGD": lambda m: fastadv.APGD(m, eps=EPS, steps=6, n_restarts=2),
    "APGD-dlr-early-stop": lambda m: fastadv.APGD(m, eps=EPS, steps=6, loss="dlr", early_stop=True),
    "APGDT": lambda m: fastadv.APGDT(m, eps=EPS, steps=5, n_target_classes=3),
    "APGDT-target-batch": lambda m: _target_batch(fastadv.APGDT(m, eps=EPS, steps=5, n_target_classes=3)),
    "CW": lambda m: fastadv.CW(m, steps=8, binary_search_steps=2),
    "DeepFool": lambda m: fastadv.DeepFool(m, steps=4),
    "JSMA": lambda m: fastadv.JSMA(m, gamma=0.05),
    "FAB": lambda m: fastadv.FAB(m, eps=EPS, steps=3),
    "FAB-T": lambda m: fastadv.FAB(m, eps=EPS, steps=3, multi_targeted=True, n_classes=4),
    "FAB-T-target-batch": lambda m: _target_batch(fastadv.FAB(m, eps=EPS, steps=3, multi_targeted=True, n_classes=4)),
    "Square": lambda m: fastadv.Square(m, eps=EPS, n_queries=40),
    "Square-l2": lambda m: fastadv.Square(m, norm="L2", eps=0.3, n_queries=40),
    "AutoAttack": lambda m: fastadv.AutoAttack(
        m, eps=EPS, version="standard", steps=3, n_queries=20, n_classes=3, log=None
    ),  # fmt: skip
    "AutoAttackLite": lambda m: fastadv.AutoAttackLite(m, eps=EPS, steps=3, n_target_classes=2, log=None),
}


def _target_batch(attack):
    attack.target_batch = 64
    return attack


def _model() -> nn.Module:
    """Moved running statistics (a forward in train mode gives other numbers than one in eval)."""
    torch.manual_seed(0)
    model = BatchNormCNN()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 8, 8) * 0.5)
    with torch.no_grad():
        model.head.weight.mul_(8)  # confident: probabilities far from uniform
    return model.eval()


def _inputs(model):
    """Images and the model's classes for them (every sample correctly classified)."""
    images = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return images, model(images).argmax(1)


def _forward_confidence(model, adv, predicted):
    with torch.no_grad():
        return torch.softmax(model(adv).float(), 1).gather(1, predicted.view(-1, 1)).squeeze(1)


def test_every_attack_class_is_covered():
    exported = {name for name in fastadv.__all__
                if inspect.isclass(getattr(fastadv, name)) and name not in ("Attack", "AttackResult", "GradientAttack",
                                                                            "UnsupportedOption")}  # fmt: skip
    assert exported <= {name.split("-")[0] for name in ATTACKS}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_confidence_is_a_forward_pass_on_the_returned_images(name):
    model = _model()
    images, labels = _inputs(model)
    if name == "PGD-targeted":
        labels = (labels + 1) % 10
    result = ATTACKS[name](model).run(images, labels)
    assert result.confidence is not None and result.confidence.dtype == torch.float32
    assert result.confidence.shape == labels.shape
    # (the attack's passes run on sub-batches: equal up to float32 rounding of another batch size)
    torch.testing.assert_close(result.confidence, _forward_confidence(model, result.adv, result.predicted),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert model.training is False
    fooled = result.success
    assert 0 < int(fooled.sum()) < labels.numel() or name == "DeepFool", "both branches (fooled and not) reached"


def test_confidence_behind_a_defence_with_bpda():
    """adaptive=True (BPDA through JPEG): the forward pass is the defended model's own."""
    pytest.importorskip("torchvision")  # JPEG's codec (the GPU machines' test stack has no torchvision)
    model = Defended(_model(), [JPEG(75)])
    images, labels = _inputs(model)
    result = fastadv.PGD(model, eps=EPS, alpha=0.03, steps=3, adaptive=True).run(images, labels)
    torch.testing.assert_close(result.confidence, _forward_confidence(model, result.adv, result.predicted),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_confidence_in_train_mode():
    """model_mode="train": the confidence is the train-mode forward's (batch statistics)."""
    model = _model()
    images, labels = _inputs(model)
    result = fastadv.FGSM(model, eps=EPS, model_mode="train").run(images, labels)
    model.train()
    try:
        with torch.no_grad():  # (batch statistics: the same batch as the attack's last pass)
            expected = torch.softmax(model(result.adv), 1).gather(1, result.predicted.view(-1, 1)).squeeze(1)
    finally:
        model.eval()
    torch.testing.assert_close(result.confidence, expected, rtol=1e-5, atol=1e-6)


class CountingModel(nn.Module):
    """Counts its forward passes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("attack, passes", [("fgsm", 2), ("pgd", 5)])
def test_evaluate_spends_no_pass_of_its_own_on_the_confidence(attack, passes):
    """One evaluation of `attack` (steps 4) at one eps on two batches: one pass to read the number
    of classes, one clean pass per batch, and the attack's own passes (FGSM: the step and the
    final iterate; PGD: 4 steps and the final iterate). Before, evaluate added one more per batch
    to read the confidence of the adversarial predictions; it still does under amp, whose attack
    passes run in half precision while the report's confidences are float32 (as the clean pass's)."""
    images, labels = _inputs(_model())  # every sample correctly classified: both batches are attacked
    calls = {}
    for amp in (None, "bf16"):
        model = CountingModel(_model())
        report = fastadv.evaluate(model, (images, labels), attacks=[attack], eps=[EPS], steps=4, batch_size=12,
                                  progress=False, workers=0, amp=amp)  # fmt: skip
        assert report["attacks"][0]["samples_attacked"] == 24
        assert report["attacks"][0]["ece"] is not None
        calls[amp] = model.calls
    assert calls == {None: 1 + 2 * (1 + passes), "bf16": 1 + 2 * (1 + passes + 1)}
