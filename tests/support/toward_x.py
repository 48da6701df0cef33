"""L2's rounding to float16 and bfloat16 (DESIGN.md, "Rounding to the output dtype"): y rounded toward
x, checked against an oracle that knows nothing of the kernels' rule, and inputs that make every
element's float32 result y a chosen value.

The oracle sorts the values of all 65536 patterns of the dtype and picks, in float64, the largest
one <= y where y > x, the smallest one >= y where y < x, and y itself where y == x. The inputs make
y exact in every backend whatever order its sums run in: each (sample, channel) has its own bound,
and x_adv lies far beyond it (projected with an eps no distance reaches), so y is the bound."""

from __future__ import annotations

import torch

SHAPE = (16, 12, 5, 7)  # 35 elements per (sample, channel): every vector width's tail
FAR = 1e4  # |x_adv|: beyond every bound below (at most 16), ||x_adv - x|| far below EPS
EPS = 1e30


def toward_x_bits(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The patterns (int32, 0..65535) of float32 y rounded toward x in x's dtype."""
    dtype = x.dtype
    patterns = torch.arange(1 << 16, dtype=torch.int32)
    values = patterns.to(torch.int16).view(dtype).double()
    keep = ~torch.isnan(values) & ~((values == 0) & (patterns >= 0x8000))  # one zero: +0
    sorted_values, order = values[keep].sort()
    sorted_patterns = patterns[keep][order]
    yd, xd = y.double().flatten(), x.double().flatten()
    down = sorted_patterns[torch.searchsorted(sorted_values, yd, right=True) - 1]  # largest <= y
    up = sorted_patterns[torch.searchsorted(sorted_values, yd).clamp_max(len(sorted_values) - 1)]  # smallest >= y
    bits = torch.where(yd > xd, down, up)  # y == x: y is representable, down == up
    # a zero takes y's sign: rounding a positive y down, or a negative one up, to zero
    bits = torch.where((bits & 0x7FFF) == 0, torch.where(torch.signbit(y.flatten()), 0x8000, 0), bits)
    return bits.reshape(y.shape)


def output_bits(out: torch.Tensor) -> torch.Tensor:
    return out.view(torch.int16).to(torch.int32) & 0xFFFF


def toward_x_case(dtype: torch.dtype, seed: int, shape: tuple = SHAPE):
    """(x_adv, x, eps, lower, upper, y): L2 op inputs of `shape` (4-d, H * W > 16) whose float32
    result is y, every element."""
    gen = torch.Generator().manual_seed(seed)
    planes = shape[0] * shape[1]
    # bounds over float32's scales from 2^-30 to 16, either sign, most not representable in dtype;
    # some zeros, some representable, some below dtype's subnormals
    scale = torch.exp2(torch.randint(-30, 4, (planes,), generator=gen).float())
    bound = torch.rand(planes, generator=gen).add(1) * scale
    bound = torch.where(torch.rand(planes, generator=gen) < 0.5, -bound, bound)
    bound[::17] = bound[::17].to(dtype).float()
    bound[5::29] = 0.0
    bound[7::29] = -0.0
    bound[9::31] = 1e-40 if dtype == torch.bfloat16 else 1e-9
    # x at every scale from far above the bound to far below it, zeros, and the bound itself
    x = torch.rand(shape, generator=gen) * torch.exp2(torch.randint(-16, 2, shape, generator=gen).float())
    x = torch.where(torch.rand(shape, generator=gen) < 0.5, -x, x)
    x[..., 0, 0] = 0.0
    x[..., 0, 1] = -0.0
    x[..., 0, 2] = bound.reshape(shape[:2])
    x = x.to(dtype)
    above = torch.rand(planes, generator=gen) < 0.5  # y is the upper bound (else the lower one)
    inf = torch.full((planes,), float("inf"))
    lower = torch.where(above, -inf, bound).reshape(*shape[:2], 1, 1)
    upper = torch.where(above, bound, inf).reshape(*shape[:2], 1, 1)
    x_adv = torch.where(above, FAR, -FAR).reshape(*shape[:2], 1, 1).expand(shape).to(dtype)
    y = bound.reshape(*shape[:2], 1, 1).expand(shape).contiguous()
    return x_adv.contiguous(), x, EPS, lower, upper, y
