"""FAB-T's target_batch: the target classes side by side in one batch of (sample, target) pairs.
With one run per target (AutoAttack's FAB-T), each pair's run starts at the image and depends on
nothing else in the batch, so the result must be the one-class-at-a-time run's field for field:
per sample, a target counts only while no earlier target has fooled the model within eps.
The model here computes in float64 and returns float32 logits, so that its rows do not depend
on the batch they are in (a float32 CNN's do, in the last bits), and equality can be exact."""

import pytest
import torch
from torch import nn

import fastadv
from fastadv.attacks.autoattack import FAB_T_CPU_PAIRS, AutoAttack

FIELDS = ("adv", "success", "norm", "loss", "steps_used", "predicted", "non_finite", "confidence")


class Float64(nn.Module):
    """`net` in float64: float32 images in, float32 logits out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.double()

    def forward(self, x):
        return self.net(x.double()).float()


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    from support.models import digits_model as fresh_copy

    model = Float64(fresh_copy()[0]).eval()
    return model, x[:24], y[:24]


def _fab_t(model, **kwargs):
    # eps where the first targets fool some samples and others withstand all: both sides of
    # "a target counts only while the sample is still robust" are reached
    return fastadv.FAB(model, eps=0.08, steps=4, multi_targeted=True, n_classes=10, **kwargs)


@pytest.mark.parametrize("target_batch", [1, 30, 100, 1000])
def test_targets_side_by_side_give_the_one_at_a_time_result(digits, target_batch):
    model, x, y = digits
    expected = _fab_t(model).run(x, y)
    assert 0 < expected.success_rate < 1, "eps chosen so that some but not all samples fall"
    assert len(set(expected.steps_used.tolist())) > 2, "samples fall at different targets"
    got = _fab_t(model, target_batch=target_batch).run(x, y)
    for field in FIELDS:
        assert torch.equal(getattr(got, field), getattr(expected, field)), field


def test_rows_of_the_float64_model_do_not_depend_on_the_batch(digits):
    model, x, _ = digits
    with torch.no_grad():
        whole = model(x)
        one_by_one = torch.cat([model(x[i : i + 1]) for i in range(x.shape[0])])
    assert torch.equal(whole, one_by_one), "the equality test above needs a batch-independent model"


def test_more_restarts_side_by_side_give_a_valid_result(digits):
    model, x, y = digits
    result = _fab_t(model, n_restarts=2, target_batch=200).run(x, y)
    with torch.no_grad():
        predicted = model(result.adv).argmax(1)
    assert torch.equal(result.predicted, predicted) and torch.equal(result.success, predicted != y)
    assert float((result.adv - x).abs().amax()) <= 0.08 + 1e-6
    one_by_one = _fab_t(model, n_restarts=2).run(x, y)
    assert abs(result.success_rate - one_by_one.success_rate) <= 0.1
    assert bool((result.steps_used % 4 == 0).all()) and int(result.steps_used.max()) <= 4 * 2 * 9


def test_verbose_names_the_targets_of_a_run(digits, capsys):
    model, x, y = digits
    attack = fastadv.FAB(model, eps=0.08, steps=1, multi_targeted=True, n_classes=10, target_batch=16, verbose=True)
    attack.run(x[:4], y[:4])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("restart 0 - target_class 2 to 5 - robust accuracy: "), lines


def test_autoattack_sets_target_batch(digits):
    model, x, y = digits
    attack = AutoAttack(model, eps=0.08, version="custom", attacks_to_run=["fab", "fab-t"], steps=2, log=None)
    attack.run(x[:8], y[:8], batch_size=24)
    stages = dict(attack.stages)
    assert stages["fab-t"].target_batch == 24
    attack.run(x[:8], y[:8], batch_size=250)
    assert stages["fab-t"].target_batch == FAB_T_CPU_PAIRS, "on a CPU, a few dozen pairs at most"
    assert stages["fab"].target_batch is None, "untargeted FAB has one round: nothing to put side by side"
