"""L2 norms over float32's whole range (DESIGN.md, "Norms over float32's whole range"): a gradient
whose float32 sum of squares underflows (entries about 1e-30, as saturated cross-entropy gives, down
to subnormals) still gives a unit direction, and a projection of an x_adv far outside the ball
(x + 1e20) lands at distance eps. Both counted as zero / infinite before: the sample did not move,
or the projection returned x."""

import pytest
import torch
import torch.nn.functional as F
from support.backends import DTYPES, FAST_BACKENDS, require_backend
from support.compare import assert_close
from support.op_inputs import to_layout
from torch import nn

import fastadv

TINY = 2.0**-149  # float32's smallest subnormal
BF16_TINY = 2.0**-133  # bfloat16's


def _underflowing_gradients(size: int, grad_dtype, gen) -> torch.Tensor:
    """Samples: entries about 1e-30 (squares 1e-60: 0 in float32); subnormal entries (float32's or,
    for bfloat16, bfloat16's smallest, times small integers); a single smallest subnormal among
    zeros; entries about 1e-20 (squares among the subnormals, summing to just below 2^-66); an
    ordinary gradient; a zero gradient."""
    shape = (6, 3, size, size)
    tiny = BF16_TINY if grad_dtype == torch.bfloat16 else TINY
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    g[0] *= 1e-30
    g[1] = torch.randint(-6, 7, shape[1:], generator=gen).double() * tiny
    g[2] = 0.0
    g[2].view(-1)[5] = -tiny
    g[3] *= 1e-20 / size
    g[5] = 0.0
    return g.to(grad_dtype)


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [5, 60], ids=["small", "split"])  # 60: samples of 10800, split kernels
def test_underflowing_gradient_gives_a_unit_direction(backend, dtype, layout, size):
    require_backend(backend, "cpu")
    gen = torch.Generator().manual_seed(size)
    # float16 gradients cannot underflow (their smallest square is 2^-48): float32 gradients for
    # float32 and float16 inputs, bfloat16 ones (float32's exponent range) for bfloat16 inputs
    grad_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    grad = _underflowing_gradients(size, grad_dtype, gen)
    x = torch.rand(grad.shape, generator=gen, dtype=torch.float64).mul(0.5).add(0.25).to(dtype)
    alpha = torch.tensor([0.5, 0.3, 0.2, 0.4, 0.25, 0.1]).view(6, 1, 1, 1)
    eps = torch.tensor([1.0, 2.0, 0.15, 3.0, 0.2, 1.0])  # per sample; samples 2 and 4 projected back
    inf = float("inf")  # no bounds: the whole step shows
    for targeted in (False, True):
        args = (to_layout(x, layout), to_layout(grad, layout), to_layout(x, layout), eps, alpha, -inf, inf)
        context = f"{backend} {dtype} {layout} targeted={targeted}"
        out = fastadv.l2_step(*args, targeted=targeted, backend=backend)
        g = grad.double().flatten(1)
        norm = g.norm(dim=1, keepdim=True)
        direction = torch.where(norm > 0, g / norm, 0.0) * (-1 if targeted else 1)
        step = torch.minimum(alpha.view(6, 1).double(), eps.view(6, 1).double())
        expected = (x.double().flatten(1) + step * direction).view(x.shape).to(dtype)
        assert_close(out, expected, context)
        moved = (out != x).flatten(1).any(dim=1)
        assert moved[:5].all(), f"{context}: samples {(~moved[:5]).nonzero().flatten().tolist()} did not move"
        assert not moved[5], f"{context}: a zero gradient moved its sample"
        assert_close(out, fastadv.l2_step(*args, targeted=targeted, backend="torch"), context)


def _far_outside(dtype, gen):
    """x in [0.25, 0.75] and x_adv far outside the ball: x + 1e20 * v (v random, unit), entries near
    float32's largest value, and (float32, bfloat16) a tiny perturbation 1e-25 * v beyond a tiny eps,
    whose squares underflow. float16 holds none of these (its largest value is 65504): its samples
    are the farthest it holds, whose squares fit in float32."""
    shape = (4, 3, 6, 6)
    x = (0.25 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype).double()
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    v /= v.flatten(1).norm(dim=1).view(4, 1, 1, 1)
    if dtype == torch.float16:
        scales, eps = [6e4, 3e4, 1e4, 100.0], [1.0, 0.5, 2.0, 0.3]
    else:
        scales, eps = [1e20, 3e38 / v.abs().max().item(), 1e25, 1e-25], [1.0, 0.5, 2.0, 1e-30]
    x_adv = x + torch.tensor(scales, dtype=torch.float64).view(4, 1, 1, 1) * v
    if dtype != torch.float16:
        x_adv[3] = 1e-25 * v[3] / v[3].abs().max()  # around x = 0: representable
        x[3] = 0.0
    return x_adv.to(dtype), x.to(dtype), torch.tensor(eps)


@pytest.mark.parametrize("backend", ("torch",) + FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_projection_from_far_outside_lands_on_the_sphere(backend, dtype, layout):
    require_backend(backend, "cpu")
    gen = torch.Generator().manual_seed(3)
    x_adv, x, eps = _far_outside(dtype, gen)
    inf = float("inf")
    delta = (x_adv.double() - x.double()).flatten(1)
    unit = delta / delta.norm(dim=1, keepdim=True)
    expected = (x.double().flatten(1) + eps.double().view(4, 1) * unit).view(x.shape).to(dtype)
    xa, xx = to_layout(x_adv, layout), to_layout(x, layout)
    for name, out in (
        ("l2_project", fastadv.l2_project(xa, xx, eps, -inf, inf, backend=backend)),
        # a zero gradient: the step is the projection
        ("l2_step", fastadv.l2_step(xa, torch.zeros_like(xa), xx, eps, 0.1, -inf, inf, backend=backend)),
    ):
        context = f"{backend} {dtype} {layout} {name}"
        distance = (out.double() - x.double()).flatten(1).norm(dim=1)
        assert_close(out, expected, context)
        # on the sphere: 16-bit outputs round toward x, each entry by less than one ulp of its value
        e = eps.double()
        ulp = torch.finfo(dtype).eps * out.double().flatten(1).abs().amax(dim=1)
        slack = ulp * out[0].numel() ** 0.5
        assert (distance <= e * (1 + 1e-5)).all() and (distance >= e * (1 - 1e-5) - slack).all(), (
            f"{context}: distances {distance.tolist()}, eps {eps.tolist()}"
        )


class _Saturated(nn.Module):
    """Two classes, logits +-100 (w . x) with ||w|| = 1: the digit-like sample below sits at distance
    0.425 from the boundary with a margin of 85, where the probability of the other class is 1e-37
    and float32 cross-entropy's input gradient has entries about 1e-36 (squares 1e-72: 0)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w.flatten())

    def forward(self, images):
        score = 100.0 * (images.flatten(1) @ self.w)
        return torch.stack([score, -score], dim=1)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_pgdl2_moves_a_sample_whose_gradient_underflows(backend):
    """A very confident sample within eps of the boundary: PGD-L2 reported it robust (its gradient
    counted as zero, it never moved); it now steps along the gradient and crosses."""
    require_backend(backend, "cpu")
    w = torch.tensor([1.0, -1.0] * 8).view(1, 4, 4) / 4  # unit norm, sum 0
    images = (0.5 + 0.425 * w).unsqueeze(0)  # w . x = 0.425, inside [0, 1]
    labels = torch.tensor([0])
    model = _Saturated(w).eval()
    images.requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(images), labels, reduction="sum"), images)[0]
    images = images.detach()
    assert grad.abs().max() > 0 and (grad * grad).sum() == 0, "the case needs an underflowing sum of squares"
    attack = fastadv.PGDL2(model, eps=1.0, alpha=0.2, steps=5, random_start=False, backend=backend)
    result = attack.run(images, labels)
    assert bool(result.success.all()), "the sample was reported robust"
    assert model(result.adv).argmax(dim=1).item() == 1
    assert (result.adv - images).norm() <= 1.0 * (1 + 1e-5)
