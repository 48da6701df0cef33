"""The L2 step and projection: every backend against the reference, special cases, invariants.

Tolerances (DESIGN.md): backends sum in another order than the reference, so float32 results
agree to rtol 1e-5 (atol 1e-6 for values near 0); float16 / bfloat16 results to one unit in the
last place of the output dtype (a float32 difference of a few ulp can round either way).
"""

import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.backends import CPU_BACKENDS, DTYPES, FAST_BACKENDS, device_params, require_backend
from support.compare import assert_close
from support.op_inputs import layouts_for, make_inputs

import fastadv

# One-program samples and split reductions (the largest sample here exceeds every backend's
# one-program size), 1-element samples, odd sizes, 2-D and 5-D, C == 1 and empty.
L2_SHAPES = [(1,), (7,), (3, 7, 5, 5), (2, 1023), (4, 16), (2, 3, 4, 5, 6), (5, 3, 8, 8), (2, 1, 4, 4),
             (0, 3, 4, 4), (2, 3, 61, 67)]  # fmt: skip
L2_PARAM_KINDS = ("scalar", "tensor0d", "per_sample", "per_channel_bounds", "per_sample_eps_channel_bounds")


def make_l2_params(kind, shape, device, gen, with_alpha=True):
    batch = shape[0]
    channels = shape[1] if len(shape) >= 2 else 1
    rest = (1,) * max(len(shape) - 2, 0)
    # eps around the typical size of the perturbations, so both rescaled and untouched samples occur
    scale = 0.15 * max(1.0, (torch.Size(shape[1:]).numel()) ** 0.5)
    p = {"eps": scale * (0.2 + torch.rand((), generator=gen).item()), "lower": -0.05, "upper": 1.05}
    if with_alpha:
        p["alpha"] = scale * 0.5 * torch.rand((), generator=gen).item()
    if kind == "tensor0d":
        p = {k: torch.tensor(v, device=device) for k, v in p.items()}
    if kind in ("per_sample", "per_sample_eps_channel_bounds"):
        p["eps"] = scale * (0.2 + torch.rand(batch, generator=gen)).to(device)
        if with_alpha:
            p["alpha"] = (scale * 0.5 * torch.rand((batch,) + (1,) * (len(shape) - 1), generator=gen)).to(device)
    if kind in ("per_channel_bounds", "per_sample_eps_channel_bounds") and len(shape) >= 2:
        p["lower"] = (-0.1 + 0.2 * torch.rand((1, channels) + rest, generator=gen)).to(device)
        p["upper"] = (0.8 + 0.3 * torch.rand((1, channels) + rest, generator=gen)).to(device)
    return p


def _cases():
    for shape in L2_SHAPES:
        for layout in layouts_for(shape):
            yield shape, layout


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", L2_PARAM_KINDS)
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_l2_step_matches_reference(device, backend, dtype, kind, targeted):
    require_backend(backend, device)
    gen = torch.Generator().manual_seed(zlib.crc32(f"l2{dtype}{kind}{targeted}".encode()))
    for i, (shape, layout) in enumerate(_cases()):
        grad_dtype = DTYPES[i % len(DTYPES)]
        x_adv, grad, x = make_inputs(shape, dtype, grad_dtype, device, layout, gen)
        grad = torch.where(torch.isinf(grad), torch.zeros_like(grad), grad)  # NaN stays; inf: see below
        p = make_l2_params(kind, shape, device, gen)
        args = (x_adv, grad, x, p["eps"], p["alpha"], p["lower"], p["upper"])
        expected = fastadv.l2_step(*args, targeted=targeted, backend="torch")
        if i % 2 == 0:
            actual = fastadv.l2_step(*args, targeted=targeted, backend=backend)
        else:
            actual = x_adv.clone()
            fastadv.l2_step(actual, *args[1:], targeted=targeted, backend=backend, out=actual)
        assert_close(actual, expected, f"{backend} {shape} {layout} grad {grad_dtype}")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", L2_PARAM_KINDS)
def test_l2_project_matches_reference(device, backend, dtype, kind):
    require_backend(backend, device)
    gen = torch.Generator().manual_seed(zlib.crc32(f"l2p{dtype}{kind}".encode()))
    for shape, layout in _cases():
        x_adv, _, x = make_inputs(shape, dtype, dtype, device, layout, gen)
        p = make_l2_params(kind, shape, device, gen, with_alpha=False)
        args = (x_adv, x, p["eps"], p["lower"], p["upper"])
        assert_close(
            fastadv.l2_project(*args, backend=backend),
            fastadv.l2_project(*args, backend="torch"),
            f"{backend} {shape} {layout}",
        )


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
def test_l2_special_cases(device, backend):
    """Zero gradient (norm 0), zero perturbation, NaN and infinite gradient entries, one-element
    samples: as the contract says, on every backend."""
    require_backend(backend, device)
    x = torch.full((3, 2, 4, 4), 0.5, device=device)
    x_adv = x.clone()
    x_adv[0] += 0.3  # sample 0 far outside the ball
    grad = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3)).to(device)
    grad[1] = 0.0  # norm 0: no step
    grad[2, 0, 0, 0] = float("nan")  # counts as 0
    out = fastadv.l2_step(x_adv, grad, x, eps=1.0, alpha=0.5, backend=backend)
    # sample 0: delta has norm 0.3*sqrt(32) + step; rescaled onto the ball
    assert abs((out[0] - x[0]).norm().item() - 1.0) < 1e-5
    assert torch.equal(out[1], x_adv[1]), "a zero gradient must not move the sample"
    g = grad[2].clone()
    g[0, 0, 0] = 0.0
    expected = (x[2] + 0.5 * g / g.norm()).clamp(0, 1)
    torch.testing.assert_close(out[2], expected, rtol=1e-5, atol=1e-6)
    assert out[2, 0, 0, 0].item() == 0.5, "a NaN gradient entry must not move its pixel"
    # zero perturbation and zero alpha: nothing moves, no 0/0
    same = fastadv.l2_step(x, grad, x, eps=0.0, alpha=0.0, backend=backend)
    assert torch.equal(same, x)
    assert torch.equal(fastadv.l2_project(x, x, eps=0.0, backend=backend), x)
    # one element per sample: the direction is the gradient's sign
    xs = torch.tensor([0.5, 0.5, 0.5], device=device)
    gs = torch.tensor([2.0, -3.0, 0.0], device=device)
    outs = fastadv.l2_step(xs, gs, xs, eps=1.0, alpha=0.25, backend=backend)
    assert outs.tolist() == [0.75, 0.25, 0.5]
    # an infinite gradient entry: inf / inf is NaN there, 0 elsewhere (the contract's arithmetic)
    gi = torch.zeros(1, 4, device=device)
    gi[0, 1] = float("inf")
    xi = torch.full((1, 4), 0.5, device=device)
    expected = fastadv.l2_step(xi, gi, xi, 1.0, 0.1, lower=-10.0, upper=10.0, backend="torch")
    assert_close(fastadv.l2_step(xi, gi, xi, 1.0, 0.1, lower=-10.0, upper=10.0, backend=backend), expected, "inf")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_l2_imagenet_batch(backend):
    """(64, 3, 224, 224): split reductions over 150528-element samples, and channels_last."""
    require_backend(backend, "cpu")
    if backend == "triton":
        shape = (4, 3, 224, 224)  # the interpreter is slow; the same code paths at a smaller batch
    else:
        shape = (64, 3, 224, 224)
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(shape, generator=gen)
    x_adv = (x + 0.01 * torch.randn(shape, generator=gen)).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=gen)
    eps = torch.rand(shape[0], generator=gen) * 3
    args = (x_adv, grad, x, eps, 1.0)
    assert_close(fastadv.l2_step(*args, backend=backend), fastadv.l2_step(*args, backend="torch"), "imagenet")


@st.composite
def l2_inputs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lower = draw(st.floats(-1.0, 0.5, width=32))
    upper = draw(st.floats(lower, 1.5, width=32))
    x = (lower + (upper - lower) * torch.rand(shape, generator=gen)).clamp(lower, upper)
    x_adv = x + draw(st.floats(0.0, 3.0)) * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen) * draw(st.sampled_from([0.0, 1e-30, 1.0, 1e10]))
    grad[torch.rand(shape, generator=gen) < 0.2] = float("nan")
    eps = draw(st.floats(0.0, 5.0, width=32))
    alpha = draw(st.floats(0.0, 5.0, width=32))
    return x_adv, grad, x, eps, alpha, lower, upper, draw(st.booleans())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=50, deadline=None)
@given(inputs=l2_inputs())
def test_l2_invariants(backend, inputs):
    """With x inside the bounds: out inside the bounds and within eps of x (float32), up to the
    rounding of x + delta to float32 (half an ulp per element: 2^-24 ||out_b||), which matters
    only when eps is tiny next to x, and up to the underflow of the float32 sum of squares
    (a distance below 2^-63 sqrt(n), where squares fall under float32's smallest normal, is not
    resolved: hypothesis found x_adv - x = 1e-23 with eps = 0)."""
    x_adv, grad, x, eps, alpha, lower, upper, targeted = inputs
    for out in (
        fastadv.l2_step(x_adv, grad, x, eps, alpha, lower, upper, targeted=targeted, backend=backend),
        fastadv.l2_project(x_adv, x, eps, lower, upper, backend=backend),
    ):
        assert bool((out >= lower).all()) and bool((out <= upper).all())
        dist = (out - x).reshape(x.shape[0], -1).norm(dim=1)
        rounding = 2**-24 * out.reshape(x.shape[0], -1).norm(dim=1)
        underflow = 2**-63 * (x[0].numel() ** 0.5)
        assert bool((dist <= eps * (1 + 1e-5) + rounding + underflow).all()), (dist.max().item(), eps)


@pytest.mark.bigmem
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_more_than_2_31_samples(backend):
    """2^31 + 8 one-element samples (gridDim.x once overflowed here): the first and last samples
    against the reference on the same slices. The emulation checks the launch geometry on the CPU."""
    require_backend(backend, "cuda")
    n = 2**31 + 8
    x = torch.full((n,), 0.5, dtype=torch.bfloat16, device="cuda")
    x_adv = x.clone()
    grad = (torch.arange(n, device="cuda") % 3 - 1).to(torch.bfloat16)  # -1, 0, 1, ...
    fastadv.l2_step(x_adv, grad, x, 0.25, 0.375, out=x_adv, backend=backend)
    for part in (slice(0, 64), slice(n - 64, n)):
        expected = fastadv.l2_step(x[part].clone(), grad[part], x[part], 0.25, 0.375, backend="torch")
        assert_close(x_adv[part], expected, f"samples {part}")
