"""Properties of the L-inf ops on random inputs (hypothesis), on every backend available here."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.backends import CPU_BACKENDS, DTYPES
from support.compare import assert_exact

import fastadv


@st.composite
def step_inputs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    lower = draw(st.floats(-1.0, 0.5, width=32))
    upper = draw(st.floats(lower, 1.5, width=32))
    eps = draw(st.floats(0.0, 0.5, width=32))
    alpha = draw(st.floats(0.0, 0.5, width=32))
    x = (lower + (upper - lower) * torch.rand(shape, generator=gen)).to(dtype)  # x inside the bounds
    x = x.float().clamp(lower, upper).to(dtype)  # stays inside after rounding... or is a bound
    x_adv = (x.float() + torch.randn(shape, generator=gen)).to(dtype)
    grad = torch.randn(shape, generator=gen)
    grad[torch.rand(shape, generator=gen) < 0.3] = float("nan")
    return x_adv, grad.to(draw(st.sampled_from(DTYPES))), x, eps, alpha, lower, upper, draw(st.booleans())


def _rounded(value, dtype):
    return torch.tensor(value, dtype=torch.float32).to(dtype).float()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=40, deadline=None)
@given(inputs=step_inputs())
def test_output_within_bounds_and_eps_ball(backend, inputs):
    x_adv, grad, x, eps, alpha, lower, upper, targeted = inputs
    out = fastadv.linf_step(x_adv, grad, x, eps, alpha, lower, upper, targeted=targeted, backend=backend).float()
    dtype = x.dtype
    # Rounding to x's dtype is monotonic, so the float32 guarantees survive it.
    assert bool((out >= _rounded(lower, dtype)).all()) and bool((out <= _rounded(upper, dtype)).all())
    x32, e32 = x.float(), torch.tensor(eps, dtype=torch.float32)
    x_in = (x32 >= lower) & (x32 <= upper)
    low_ball = (x32 - e32).to(dtype).float()
    high_ball = (x32 + e32).to(dtype).float()
    assert bool(((out >= low_ball) & (out <= high_ball))[x_in].all())
    if dtype == torch.float32:
        assert bool(((out - x32).abs() <= eps * (1 + 1e-6) + 1e-7)[x_in].all())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=40, deadline=None)
@given(inputs=step_inputs())
def test_nan_gradient_never_moves_a_pixel(backend, inputs):
    x_adv, grad, x, eps, alpha, lower, upper, targeted = inputs
    # Start from a feasible point, so that the projection alone changes nothing.
    start = fastadv.linf_project(x_adv, x, eps, lower, upper, backend="torch")
    out = fastadv.linf_step(start, grad, x, eps, alpha, lower, upper, targeted=targeted, backend=backend)
    nan = torch.isnan(grad)
    # the step adds alpha * 0 = +0.0 there (-0.0 when targeted): a -0.0 pixel comes out +0.0, as
    # IEEE's -0.0 + 0.0 is; its value, and every other bit, unchanged
    unmoved = start + (-0.0 if targeted else 0.0)
    assert_exact(out[nan], unmoved[nan], "pixels with a NaN gradient")
