"""Every fast backend equals the reference bit for bit (docs/DESIGN.md: exact equality in all dtypes)."""

import zlib

import pytest
import torch
from support.backends import DTYPES, FAST_BACKENDS, device_params, require_backend
from support.compare import assert_exact
from support.op_inputs import PARAM_KINDS, SHAPES, layouts_for, make_inputs, make_params, to_layout

import fastadv


def _cases():
    for shape in SHAPES:
        for layout in layouts_for(shape):
            yield shape, layout


def _call(fn, args, kwargs, mode, x_adv):
    """Runs the op out of place, with a fresh `out`, or in place on a copy of x_adv."""
    if mode == "new":
        return fn(*args, **kwargs)
    if mode == "out":
        out = torch.full_like(x_adv, 7.0)
        result = fn(*args, **kwargs, out=out)
        assert result is out
        return out
    inplace = x_adv.clone()
    result = fn(inplace, *args[1:], **kwargs, out=inplace)
    assert result is inplace
    return inplace


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", PARAM_KINDS)
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_linf_step_equals_reference(device, backend, dtype, kind, targeted):
    require_backend(backend, device)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{kind}{targeted}".encode()))
    for i, (shape, layout) in enumerate(_cases()):
        grad_dtype = DTYPES[i % len(DTYPES)]
        x_adv, grad, x = make_inputs(shape, dtype, grad_dtype, device, layout, gen)
        p = make_params(kind, shape, device, gen)
        args = (x_adv, grad, x, p["eps"], p["alpha"], p["lower"], p["upper"])
        expected = fastadv.linf_step(*args, targeted=targeted, backend="torch")
        mode = ("new", "out", "inplace")[i % 3]
        actual = _call(fastadv.linf_step, args, {"targeted": targeted, "backend": backend}, mode, x_adv)
        assert_exact(actual, expected, f"{backend} {shape} {layout} grad {grad_dtype} {mode}")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", PARAM_KINDS)
def test_linf_project_equals_reference(device, backend, dtype, kind):
    require_backend(backend, device)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{kind}".encode()))
    for i, (shape, layout) in enumerate(_cases()):
        x_adv, _, x = make_inputs(shape, dtype, dtype, device, layout, gen)
        p = make_params(kind, shape, device, gen, names=("eps", "lower", "upper"))
        args = (x_adv, x, p["eps"], p["lower"], p["upper"])
        expected = fastadv.linf_project(*args, backend="torch")
        mode = ("new", "out", "inplace")[i % 3]
        actual = _call(fastadv.linf_project, args, {"backend": backend}, mode, x_adv)
        assert_exact(actual, expected, f"{backend} {shape} {layout} {mode}")


def _zeros_on_edges(shape, dtype, layout):
    """x_adv and x made of signed zeros, each sample with its own eps, every x_adv inside its ball
    and on an edge of it or of the bounds: sample 0 x_adv -0.0, x +0.0, eps 0 (the ball is [+0, +0]);
    1: +0.0, -0.0, eps 0; 2: -0.0 with x 0.5, eps 0.5 (x - eps is +0.0); 3: -0.0 with x -0.0, eps
    0.25. Within each sample the signs alternate, so both operand orders meet in every vector."""
    x_adv = torch.zeros(shape)
    x = torch.zeros(shape)
    alternate = torch.arange(x_adv[0].numel()).view(shape[1:]) % 2 == 1
    x_adv[0] = torch.where(alternate, 0.0, -0.0)
    x_adv[1] = torch.where(alternate, -0.0, 0.0)
    x[1] = torch.where(alternate, 0.0, -0.0)
    x_adv[2], x[2] = torch.where(alternate, 0.0, -0.0), 0.5
    x_adv[3] = torch.where(alternate, 0.0, -0.0)
    x[3] = torch.where(alternate, 0.0, -0.0)
    eps = torch.tensor([0.0, 0.0, 0.5, 0.25])
    return to_layout(x_adv.to(dtype), layout), to_layout(x.to(dtype), layout), eps


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_signed_zeros_keep_their_sign(backend, dtype, layout):
    """DESIGN.md, signed zeros: a clamp tie keeps the clamped value, so a zero inside its ball and
    bounds keeps its sign bit, in the reference (whose torch.maximum answered -0.0 or +0.0 by the
    size of the tensor) and in every kernel (which answered +0.0). Shapes: odd sizes (vector loops
    and their tails) and a large sample (torch's vector path)."""
    require_backend(backend, "cpu")
    for shape in ((4, 3, 5, 7), (4, 3, 16, 16)):
        x_adv, x, eps = _zeros_on_edges(shape, dtype, layout)
        zero_grad = torch.zeros_like(x_adv)
        for lower, upper in ((0.0, 1.0), (-1.0, -0.0)):
            context = f"{backend} {shape} {layout} bounds [{lower}, {upper}]"
            project = fastadv.linf_project(x_adv, x, eps, lower, upper, backend=backend)
            assert_exact(project, x_adv, f"{context} project")
            # a zero gradient steps by alpha * 0: +0.0 (-0.0 + 0.0 = +0.0), or -0.0 when targeted
            step = fastadv.linf_step(x_adv, zero_grad, x, eps, 0.1, lower, upper, backend=backend)
            assert_exact(step, x_adv.abs(), f"{context} step")
            targeted = fastadv.linf_step(x_adv, zero_grad, x, eps, 0.1, lower, upper, targeted=True, backend=backend)
            assert_exact(targeted, x_adv, f"{context} targeted step")


def test_reference_follows_the_contract_by_hand():
    """The reference itself, on values worked out by hand from DESIGN.md."""
    x = torch.tensor([[0.50, 0.50, 0.50, 0.98, 0.02, 0.50]])
    x_adv = torch.tensor([[0.50, 0.55, 0.40, 0.98, 0.02, 0.70]])
    grad = torch.tensor([[1.0, 1.0, -1.0, 5.0, -2.0, float("nan")]])
    out = fastadv.linf_step(x_adv, grad, x, eps=0.1, alpha=0.25, backend="torch")
    # 0.5+0.25 clipped to x+eps; 0.55+0.25 likewise; 0.4-0.25 clipped to x-eps; 0.98+0.25 -> eps
    # ball 1.08 -> bound 1.0; 0.02-0.25 -> -0.08 -> bound 0.0; NaN gradient: 0.70 only projected.
    x32 = torch.tensor(0.5, dtype=torch.float32)
    e32 = torch.tensor(0.1, dtype=torch.float32)
    expected = torch.tensor([[x32 + e32, x32 + e32, x32 - e32, 1.0, 0.0, x32 + e32]])
    assert_exact(out, expected, "hand-worked values")
    targeted = fastadv.linf_step(x_adv, grad, x, eps=0.1, alpha=0.25, targeted=True, backend="torch")
    assert targeted[0, 0].item() == pytest.approx(0.4) and targeted[0, 2].item() == pytest.approx(0.6)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_conversions_cover_every_value(backend, dtype):
    """Loads: every 16-bit pattern (subnormals, infinities, NaNs) survives a projection with the
    widest ball (eps must be finite) and infinite bounds. Stores: a million float32 values, each an
    alpha of its own (a [B, C] table on a 2-D input), rounded into the half type as the reference
    rounds (to nearest; an overflow to infinity goes back to the largest value, within the ball)."""
    widest = torch.finfo(torch.float32).max
    require_backend(backend, "cpu")
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(256, 256)
    every = bits.view(dtype)
    args = (every, every, widest, -float("inf"), float("inf"))
    out = fastadv.linf_project(*args, backend=backend)
    assert_exact(out, fastadv.linf_project(*args, backend="torch"), "every 16-bit pattern")
    assert_exact(out, every, "every 16-bit value round-trips")

    gen = torch.Generator().manual_seed(7)
    exponent = torch.randint(-30, 20, (1024, 1024), generator=gen).float()
    alpha = torch.rand(1024, 1024, generator=gen) * torch.exp2(exponent)  # subnormal to overflow
    zeros = torch.zeros(1024, 1024, dtype=dtype)
    ones = torch.ones(1024, 1024)
    for targeted in (False, True):
        args = (zeros, ones, zeros, widest, alpha, -float("inf"), float("inf"))
        expected = fastadv.linf_step(*args, targeted=targeted, backend="torch")
        assert_exact(fastadv.linf_step(*args, targeted=targeted, backend=backend), expected, f"stores {targeted}")
