"""APGDT's target_batch: the target classes side by side in one batch of (sample, target) pairs.
One pair per batch is the one-class-at-a-time run exactly; larger batches give a valid result
(the model's verdict on the images, within eps) that fools about as many samples, and
AutoAttack's APGD-T stage uses them."""

import pytest
import torch

import fastadv
from fastadv.attacks.autoattack import AutoAttack


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:40], y[:40]


def _apgdt(model, **kwargs):
    return fastadv.APGDT(model, eps=0.06, steps=5, n_classes=10, **kwargs)


@pytest.mark.parametrize("early_stop", [False, True])
def test_one_pair_at_a_time_is_the_one_class_at_a_time_run(digits, early_stop):
    model, x, y = digits
    expected = _apgdt(model, early_stop=early_stop).run(x, y)
    got = _apgdt(model, early_stop=early_stop, target_batch=1).run(x, y)
    for field in ("adv", "success", "loss", "steps_used", "predicted", "non_finite"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field


@pytest.mark.parametrize("target_batch", [100, 1000])
def test_pairs_side_by_side_give_a_valid_result(digits, target_batch):
    model, x, y = digits
    one_by_one = _apgdt(model, early_stop=True).run(x, y)
    result = _apgdt(model, early_stop=True, target_batch=target_batch).run(x, y)
    with torch.no_grad():
        predicted = model(result.adv).argmax(1)
    assert torch.equal(result.predicted, predicted) and torch.equal(result.success, predicted != y)
    assert float((result.adv - x).abs().max()) <= 0.06 + 1e-6
    assert 0 < result.success_rate < 1, "eps chosen so that some but not all samples fall"
    assert abs(result.success_rate - one_by_one.success_rate) <= 0.1
    # a sample robust to every target got every target's steps (a start and 5 steps each)
    robust = ~result.success
    assert bool((result.steps_used[robust] == 9 * 6).all())
    assert bool((result.steps_used[result.success] <= 9 * 6).all())


def test_autoattack_sets_target_batch(digits):
    model, x, y = digits
    attack = AutoAttack(model, eps=0.06, version="custom", attacks_to_run=["apgd-t"], steps=2, log=None)
    attack.run(x[:8], y[:8], batch_size=24)
    assert dict(attack.stages)["apgd-t"].target_batch == 24
