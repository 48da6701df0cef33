"""float16 and bfloat16 outputs stay within the budget (DESIGN.md, "Rounding to the output dtype"):
nearest rounding of the float32 result could leave the eps ball (eps 0.1 became 0.1016). The cases
below are built so that it would, and every backend must equal the reference bit for bit."""

import pytest
import torch
from support.backends import FAST_BACKENDS, require_backend
from support.compare import assert_exact
from support.op_inputs import to_layout
from support.toward_x import output_bits, toward_x_bits, toward_x_case

import fastadv
from fastadv.backends.torch_backend import round_within_budget

HALF_DTYPES = (torch.float16, torch.bfloat16)
SHAPE = (8, 3, 5, 7)
# eps that no 16-bit float represents, so the ball's edge lies between two of them.
EPS = (0.1, 8 / 255, 0.05, 0.3, 0.0371, 0.2, 0.1, 0.013)


def _eps(kind: str):
    if kind == "scalar":
        return 0.1
    if kind == "per_sample":
        return torch.tensor(EPS)
    if kind == "per_channel":
        return torch.tensor([0.1, 8 / 255, 0.0371]).reshape(1, 3, 1, 1)
    return torch.tensor(EPS).reshape(8, 1, 1, 1) * torch.tensor([1.0, 0.7, 1.3]).reshape(1, 3, 1, 1)


def _eps_like(eps, x: torch.Tensor) -> torch.Tensor:
    """eps as the float32 values the ops compare with, broadcast against x, in float64."""
    t = torch.as_tensor(eps, dtype=torch.float32)
    return t.reshape(-1, *[1] * (x.dim() - 1)).double() if t.dim() == 1 else t.double()


def _inputs(dtype, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(SHAPE, generator=gen).to(dtype)
    x_adv = (x.float() + 0.3 * torch.randn(SHAPE, generator=gen)).to(dtype)
    grad = torch.randn(SHAPE, generator=gen)
    return to_layout(x_adv, layout), to_layout(grad, layout), to_layout(x, layout)


def _run(op, args, kwargs, backend, in_place):
    if not in_place:
        return op(*args, **kwargs, backend=backend)
    out = args[0].clone()
    assert op(out, *args[1:], **kwargs, out=out, backend=backend) is out
    return out


def _nearest(op, args, kwargs, dtype):
    """What plain nearest rounding of the float32 result gives (the old behaviour)."""
    widened = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return op(*widened, **kwargs, backend="torch").to(dtype)


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("kind", ("scalar", "per_sample", "per_channel", "per_sample_channel"))
def test_linf_output_stays_in_the_ball(backend, dtype, kind):
    require_backend(backend, "cpu")
    eps = _eps(kind)
    cases = [(layout, targeted, in_place) for layout in ("contiguous", "channels_last") for targeted in (False, True)
             for in_place in (False, True)]  # fmt: skip
    for seed, (layout, targeted, in_place) in enumerate(cases):
        x_adv, grad, x = _inputs(dtype, layout, seed)
        bounds = (-float("inf"), float("inf"))
        step = (fastadv.linf_step, (x_adv, grad, x, eps, 0.25, *bounds), {"targeted": targeted})
        project = (fastadv.linf_project, (x_adv, x, eps, *bounds), {})
        for op, args, kwargs in (step, project):
            context = f"{backend} {op.__name__} {layout} targeted={targeted} in_place={in_place}"
            out = _run(op, args, kwargs, backend, in_place)
            limit = _eps_like(eps, x)
            nearest = _nearest(op, args, kwargs, dtype)
            assert ((nearest.double() - x.double()).abs() > limit).any(), f"{context}: the case tests nothing"
            assert ((out.double() - x.double()).abs() <= limit).all(), context
            assert_exact(out, op(*args, **kwargs, backend="torch"), context)
            # only the elements that left the ball moved, by one unit in the last place
            moved = out != nearest
            assert torch.equal(moved, (nearest.double() - x.double()).abs() > limit), context


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_l2_output_stays_in_the_ball(backend, dtype):
    require_backend(backend, "cpu")
    eps = torch.tensor([0.5, 1.0, 2.0, 0.3, 0.7, 1.3, 0.9, 0.41])
    for seed, (layout, targeted, in_place) in enumerate(
        [("contiguous", False, False), ("channels_last", True, True), ("contiguous", True, True)]
    ):
        x_adv, grad, x = _inputs(dtype, layout, 100 + seed)
        x_adv = (x.float() + 4 * (x_adv.float() - x.float())).to(dtype)  # outside the ball: rescaled
        bounds = (-float("inf"), float("inf"))
        step = (fastadv.l2_step, (x_adv, grad, x, eps, 1.5, *bounds), {"targeted": targeted})
        project = (fastadv.l2_project, (x_adv, x, eps, *bounds), {})
        for op, args, kwargs in (step, project):
            context = f"{backend} {op.__name__} {layout} targeted={targeted} in_place={in_place}"
            out = _run(op, args, kwargs, backend, in_place)
            limit = eps.double() * (1 + 1e-5)
            nearest = _nearest(op, args, kwargs, dtype)
            assert ((nearest.double() - x.double()).flatten(1).norm(dim=1) > limit).any(), f"{context}: tests nothing"
            assert ((out.double() - x.double()).flatten(1).norm(dim=1) <= limit).all(), context
            # every element rounded toward x: never farther from x than the float32 result
            y = op(*(a.float() if isinstance(a, torch.Tensor) else a for a in args), **kwargs, backend="torch")
            assert ((out.double() - x.double()).abs() <= (y.double() - x.double()).abs()).all(), context
            if backend == "torch":
                continue
            # the kernels compute 1 / ||g|| and the norms in another order: one ulp from the reference
            expected = op(*args, **kwargs, backend="torch")
            ulp = torch.finfo(dtype).eps * expected.float().abs().clamp_min(torch.finfo(dtype).tiny)
            assert ((out.float() - expected.float()).abs() <= ulp).all(), context


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_l2_rounds_toward_x(backend, dtype, layout):
    """L2 rounds y toward x exactly, bit for bit the oracle's directed rounding (tests/support/
    toward_x.py), also where x lies so far from y that the float32 differences of L-inf's rule
    cannot tell nearest(y) from y (that rule with a zero limit left some of these elements beyond y)."""
    require_backend(backend, "cpu")
    x_adv, x, eps, lower, upper, y = toward_x_case(dtype, seed=11)
    expected = toward_x_bits(y, x)
    assert (output_bits(round_within_budget(y, x, 0.0, dtype)) != expected).any(), "tests nothing"
    x_adv, x = to_layout(x_adv, layout), to_layout(x, layout)
    for targeted in (False, True):
        out = fastadv.l2_step(
            x_adv, torch.zeros_like(x_adv), x, eps, 0.5, lower, upper, targeted=targeted, backend=backend
        )
        assert torch.equal(output_bits(out), expected), f"{backend} l2_step {layout} targeted={targeted}"
    out = fastadv.l2_project(x_adv, x, eps, lower, upper, backend=backend)
    assert torch.equal(output_bits(out), expected), f"{backend} l2_project {layout}"


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_rounding_keeps_representable_bounds(backend, dtype):
    """Moving toward x never crosses a bound that the dtype represents, even with x outside it."""
    require_backend(backend, "cpu")
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(SHAPE, generator=gen).mul(1.2).sub(0.1).to(dtype)  # some of x outside [0.25, 0.75]
    x_adv = (x.float() + 0.5 * torch.randn(SHAPE, generator=gen)).to(dtype)
    grad = torch.randn(SHAPE, generator=gen)
    lower, upper = 0.25, 0.75
    for op, args in (
        (fastadv.linf_step, (x_adv, grad, x, 0.1, 0.3, lower, upper)),
        (fastadv.linf_project, (x_adv, x, 0.1, lower, upper)),
        (fastadv.l2_step, (x_adv, grad, x, 2.0, 1.0, lower, upper)),
        (fastadv.l2_project, (x_adv, x, 0.7, lower, upper)),
    ):
        out = op(*args, backend=backend)
        assert out.min() >= lower and out.max() <= upper, f"{backend} {op.__name__}"
        if op in (fastadv.linf_step, fastadv.linf_project):
            assert_exact(out, op(*args, backend="torch"), f"{backend} {op.__name__}")


def test_float32_is_rounded_once_as_before():
    """float32 outputs are not touched by the rule: PGD stays identical to torchattacks."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(SHAPE, generator=gen)
    x_adv = x + 0.3 * torch.randn(SHAPE, generator=gen)
    grad = torch.randn(SHAPE, generator=gen)
    expected = torch.clamp(torch.min(torch.max(x_adv + 0.25 * grad.sign(), x - 0.1), x + 0.1), 0, 1)
    assert torch.equal(fastadv.linf_step(x_adv, grad, x, 0.1, 0.25, backend="cpu"), expected)


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_moves_from_zero_and_from_infinity(backend, dtype):
    """The ends of the sign-magnitude encoding: y rounded to a zero (x at subnormal scale) moves to
    the smallest subnormal on x's side; y rounded to an infinity (beyond the largest finite
    value) moves back to the largest finite value."""
    require_backend(backend, "cpu")
    info = torch.finfo(dtype)
    tiny = info.smallest_normal * info.eps  # the smallest subnormal
    x = torch.tensor([[tiny, -tiny, info.max, -info.max]]).to(dtype)
    x_adv = torch.tensor([[-1.0, 1.0, float("inf"), -float("inf")]]).to(dtype)
    wide = 30.0 if dtype == torch.float16 else 1e36  # x + wide rounds to infinity
    eps = torch.tensor([[0.6 * tiny, 0.6 * tiny, wide, wide]])  # per channel
    args = (x_adv, x, eps, -float("inf"), float("inf"))
    nearest = _nearest(fastadv.linf_project, args, {}, dtype)
    assert torch.equal(nearest.float(), torch.tensor([[0.0, 0.0, float("inf"), -float("inf")]]))
    out = fastadv.linf_project(*args, backend=backend)
    assert torch.equal(out, x), f"{backend}: {out} != {x}"
