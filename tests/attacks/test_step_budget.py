"""steps * alpha < eps: the iterate never reaches the edge of the eps-ball. The gradient
attacks that take alpha warn once, when built (README's PGD at eps 0.1 kept
torchattacks' alpha 2/255 and 10 steps); sensible budgets and APGD (its own step sizes) do not."""

import warnings

import pytest
import torch

import fastadv
from fastadv.attacks.gradient import StepBudgetWarning

MODEL = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("make", [
    lambda: fastadv.PGD(MODEL, eps=0.1),  # torchattacks' alpha 2/255, 10 steps
    lambda: fastadv.MIFGSM(MODEL, eps=0.1, alpha=0.005, steps=10),
    lambda: fastadv.PGDL2(MODEL, eps=3.0, alpha=0.2, steps=10),
    lambda: fastadv.FGSM(MODEL, eps=0.1, alpha=0.05),
    lambda: fastadv.PGD(MODEL, eps=torch.tensor([0.01, 0.2]), alpha=0.01, steps=10),  # one sample short
], ids=["pgd-torchattacks-defaults", "mifgsm", "pgdl2", "fgsm", "per-sample"])  # fmt: skip
def test_short_budget_warns_when_built(make):
    with pytest.warns(StepBudgetWarning, match=r"steps \* alpha = .* < eps = .*never reaches the edge"):
        make()


@pytest.mark.parametrize("make", [
    lambda: fastadv.PGD(MODEL, eps=0.1, alpha=0.025, steps=10),
    lambda: fastadv.PGD(MODEL, eps=8 / 255),  # torchattacks' defaults at their own eps
    lambda: fastadv.FGSM(MODEL, eps=0.1),
    lambda: fastadv.APGD(MODEL, eps=0.1, steps=2),
    lambda: fastadv.PGDL2(MODEL, eps=1.0),
], ids=["pgd", "pgd-8/255", "fgsm", "apgd", "pgdl2"])  # fmt: skip
def test_sensible_budgets_do_not_warn(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepBudgetWarning)
        make()


def test_warned_once_per_attack_not_per_call():
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with pytest.warns(StepBudgetWarning) as caught:
        attack = fastadv.PGD(MODEL, eps=0.1, alpha=0.001, steps=2)
        attack(x, y)
        attack.run(x, y)
    assert len([w for w in caught if w.category is StepBudgetWarning]) == 1
    assert caught[0].filename == __file__  # points at the caller's line
