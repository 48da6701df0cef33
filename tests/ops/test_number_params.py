"""eps, alpha, lower and upper given as Python numbers are checked once per value and reused
(op_checks._checked_number): the reuse must keep every error and tell -0.0 from 0.0."""

import pytest
import torch

import fastadv


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_a_negative_zero_bound_is_not_taken_for_zero(backend):
    if fastadv.available_backends()[backend] != "ok":
        pytest.skip(fastadv.available_backends()[backend])
    x = torch.zeros(2, 8)
    x_adv = torch.full((2, 8), -1e-3)  # below both bounds: the output is the lower bound itself
    for lower in (0.0, -0.0, 0.0, -0.0):  # each after the other, so a value reused across signs shows
        out = fastadv.linf_project(x_adv, x, 1.0, lower, 1.0, backend=backend)
        assert torch.equal(torch.signbit(out), torch.full_like(out, str(lower).startswith("-"), dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": float("nan")}, "eps must not be NaN"),
        ({"alpha": float("inf")}, "alpha must be finite"),
        ({"eps": 1e39}, "beyond float32's range"),
        ({"lower": float("nan")}, "lower must not be NaN"),
    ],
)
def test_a_bad_number_is_refused_every_time(kwargs, text):
    x = torch.rand(2, 3)
    args = {"eps": 0.1, "alpha": 0.01, "lower": 0.0, "upper": 1.0} | kwargs
    for _ in range(3):
        with pytest.raises(ValueError, match=text):
            fastadv.linf_step(x.clone(), torch.randn(2, 3), x, backend="torch", **args)


def test_good_numbers_still_become_float32():
    x = torch.zeros(1, 4)
    for _ in range(2):
        out = fastadv.linf_project(torch.ones(1, 4), x, 0.1, backend="torch")
        assert torch.equal(out, torch.full((1, 4), 0.1, dtype=torch.float32))
