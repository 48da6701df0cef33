"""Comparisons of op outputs: bitwise (the sign of a zero included) and within each dtype's
tolerance, both naming the first mismatches."""

from __future__ import annotations

import torch


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, context: str = "") -> None:
    """Bitwise-equal values, the sign of a zero included (DESIGN.md, signed zeros); NaN equal to
    NaN whatever its payload. On failure, the first mismatches."""
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.float().cpu(), expected.float().cpu()
    same = ((a == e) & (torch.signbit(a) == torch.signbit(e))) | (torch.isnan(a) & torch.isnan(e))
    if bool(same.all()):
        return
    bad = (~same).nonzero()[:8]
    rows = [f"  at {tuple(i.tolist())}: got {a[tuple(i)].item()!r}, expected {e[tuple(i)].item()!r}" for i in bad]
    raise AssertionError(f"{context}: {int((~same).sum())} of {a.numel()} elements differ\n" + "\n".join(rows))


TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.float16: (2**-10, 2**-14), torch.bfloat16: (2**-7, 2**-14)}


def assert_close(actual, expected, context=""):
    rtol, atol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{context}: {m}")
