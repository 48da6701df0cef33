"""The L2 step for gradients with infinite entries or an overflowing norm (DESIGN.md, the L2 step):
the direction is the limit of g / ||g||, sign(g_i) / sqrt(k) on the k infinite entries, and
g / ||g|| computed without overflow when the float32 sum of squares overflows. It was NaN (a
model m(x ** (1 / 2.2)) has infinite input gradients at black pixels)."""

import math

import pytest
import torch
from support.backends import FAST_BACKENDS, require_backend
from support.compare import assert_close
from support.op_inputs import to_layout

import fastadv
from fastadv.backends.torch_backend import l2_direction

INF, NAN = float("inf"), float("nan")


def test_direction_by_hand():
    g = torch.tensor(
        [
            [1.0, INF, 3.0, NAN],  # one infinite entry: the unit vector along it
            [INF, -INF, 2.0, NAN],  # two: +-1/sqrt(2), finite and NaN entries 0
            [-INF, -INF, -INF, -INF],  # every entry
            [3e19, -4e19, NAN, 0.0],  # finite, but the squares overflow float32
            [3.0, -4.0, 0.0, NAN],  # the usual g / ||g||
            [0.0, NAN, 0.0, NAN],  # no direction
        ]
    )
    r = 1 / math.sqrt(2)
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 0.0],
            [r, -r, 0.0, 0.0],
            [-0.5, -0.5, -0.5, -0.5],
            [0.6, -0.8, 0.0, 0.0],
            [0.6, -0.8, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(l2_direction(g), expected, rtol=1e-6, atol=0)


def test_overflowing_norm_is_taken_safely_up_to_float32_max():
    gen = torch.Generator().manual_seed(1)
    for magnitude in (2e19, 1e25, 1e38, 3.4e38):
        g = torch.randn(4, 3000, generator=gen).clamp(-3, 3) * (magnitude / 3)
        expected = g.double() / g.double().norm(dim=1, keepdim=True)
        torch.testing.assert_close(l2_direction(g).double(), expected, rtol=1e-5, atol=1e-7)


def _cases(dtype, grad_dtype, size):
    """Samples: one +inf among finite entries; several +-inf with NaN; every entry infinite; all
    finite with overflowing squares (bfloat16 and float32 gradients only); ordinary; zero."""
    gen = torch.Generator().manual_seed(size)
    shape = (6, 3, size, size)
    x = torch.rand(shape, generator=gen)
    x_adv = (x + 0.05 * torch.randn(shape, generator=gen)).clamp(0, 1)
    g = torch.randn(shape, generator=gen)
    g[0].view(-1)[7] = INF
    flat = g[1].view(-1)
    pick = torch.randperm(flat.numel(), generator=gen)
    flat[pick[:5]] = INF
    flat[pick[5:9]] = -INF
    flat[pick[9:40]] = NAN
    g[2] = torch.where(torch.rand(shape[1:], generator=gen) < 0.5, INF, -INF)
    # squares that overflow: in the split case each chunk's sum stays finite and only the total
    # overflows (about 2.2e38 per chunk of 4096, 5.7e38 in all)
    g[3] = g[3] * ((2.3e17 if size > 50 else 1e25) if grad_dtype != torch.float16 else 1.0)
    g[3].view(-1)[3] = NAN
    g[5] = 0.0
    return x_adv.to(dtype), g.to(grad_dtype), x.to(dtype)


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize(
    "dtype,grad_dtype",
    [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.float16)],
    ids=["float32", "bfloat16-grad", "float16"],
)
@pytest.mark.parametrize("size", [5, 60], ids=["small", "split"])  # 60: samples of 10800, split kernels
def test_infinite_gradient_entries(backend, dtype, grad_dtype, size):
    require_backend(backend, "cpu")
    x_adv, grad, x = _cases(dtype, grad_dtype, size)
    eps = torch.tensor([0.5, 1.0, 2.0, 0.7, 0.3, 100.0])  # sample 5 (zero gradient) inside its ball
    for targeted, layout in ((False, "contiguous"), (True, "channels_last")):
        args = (to_layout(x_adv, layout), to_layout(grad, layout), to_layout(x, layout), eps, 0.2)
        context = f"{backend} targeted={targeted} {layout}"
        out = fastadv.l2_step(*args, targeted=targeted, backend=backend)
        assert torch.isfinite(out).all(), context
        assert (out >= 0).all() and (out <= 1).all(), context
        distance = (out.double() - x.double()).flatten(1).norm(dim=1)
        assert (distance <= eps.double() * (1 + 1e-5)).all(), context
        assert (out != x_adv)[:5].flatten(1).any(dim=1).all(), f"{context}: a sample did not move"
        assert torch.equal(out[5], x_adv[5]), f"{context}: a zero gradient moved its sample"
        assert_close(out, fastadv.l2_step(*args, targeted=targeted, backend="torch"), context)


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
def test_the_step_follows_the_infinite_entries(backend):
    """Sample 0's step goes along its infinite entry only, sample 1's along +-1/sqrt(2)."""
    require_backend(backend, "cpu")
    x = torch.full((2, 1, 4, 4), 0.5)
    grad = torch.randn(2, 1, 4, 4)
    grad[0, 0, 1, 2] = -INF
    grad[1, 0, 0, 0], grad[1, 0, 3, 3] = INF, -INF
    out = fastadv.l2_step(x, grad, x, eps=1.0, alpha=0.1, backend=backend)
    step = out - x
    expected = torch.zeros_like(step)
    expected[0, 0, 1, 2] = -0.1
    expected[1, 0, 0, 0], expected[1, 0, 3, 3] = 0.1 / math.sqrt(2), -0.1 / math.sqrt(2)
    torch.testing.assert_close(step, expected, rtol=1e-5, atol=1e-7)
