"""Random op inputs: awkward shapes, memory layouts, gradients with zeros, NaNs and infinities,
and the parameter kinds (scalar, 0-d, per sample, per channel, per sample and channel)."""

from __future__ import annotations

import torch

# Shapes with awkward sizes: one element, odd lengths, 2-D, 5-D, C == 1, and empty.
SHAPES = [(1,), (1023,), (3, 7, 5, 5), (2, 1023), (4, 16), (2, 3, 4, 5, 6), (5, 3, 8, 8), (2, 1, 4, 4), (0, 3, 4, 4)]
PARAM_KINDS = ("scalar", "tensor0d", "per_sample", "per_channel", "per_sample_channel")


def layouts_for(shape):
    names = ["contiguous", "strided", "mixed"]
    if len(shape) in (4, 5):
        names.append("channels_last")
    return names


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: channels_last, or an arbitrary strided view."""
    if layout == "channels_last" and t.dim() in (4, 5):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if layout == "strided":
        wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
        view = wide[..., ::2]
        view.copy_(t)
        return view
    return t.contiguous()


def make_inputs(shape, dtype, grad_dtype, device, layout, gen):
    """x in [0, 1], x_adv near x (some outside the eps ball and the bounds), a gradient with
    zeros, NaNs and infinities."""
    x = torch.rand(shape, generator=gen)
    x_adv = x + 0.15 * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    pick = torch.rand(shape, generator=gen)
    grad[pick < 0.1] = 0.0
    grad[(pick >= 0.1) & (pick < 0.15)] = float("nan")
    grad[(pick >= 0.15) & (pick < 0.2)] = float("inf")
    grad[(pick >= 0.2) & (pick < 0.25)] = -float("inf")
    x_adv, x = x_adv.to(device, dtype), x.to(device, dtype)
    grad = grad.to(device, grad_dtype)
    if layout == "mixed":  # each input in a different layout
        return to_layout(x_adv, "channels_last"), to_layout(grad, "strided"), x
    return to_layout(x_adv, layout), to_layout(grad, layout), to_layout(x, layout)


def _param_shape(kind, shape):
    batch = shape[0]
    channels = shape[1] if len(shape) >= 2 else 1
    rest = (1,) * max(len(shape) - 2, 0)
    if kind == "per_sample":
        return (batch,)
    if kind == "per_channel":
        return (1, channels) + rest if len(shape) >= 2 else (1,)
    if kind == "per_sample_channel":
        return (batch, channels) + rest if len(shape) >= 2 else (batch,)
    return ()


def make_params(kind, shape, device, gen, names=("eps", "alpha", "lower", "upper")):
    """eps in [0, 0.1], alpha in [0, 0.05], lower in [-0.1, 0.3], upper in [0.7, 1.1]."""
    ranges = {"eps": (0.0, 0.1), "alpha": (0.0, 0.05), "lower": (-0.1, 0.3), "upper": (0.7, 1.1)}
    out = {}
    for name in names:
        lo, hi = ranges[name]
        if kind == "scalar":
            out[name] = lo + (hi - lo) * torch.rand((), generator=gen).item()
            continue
        value = lo + (hi - lo) * torch.rand(_param_shape(kind, shape), generator=gen)
        out[name] = value.to(device)
    return out
