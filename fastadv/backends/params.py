"""The form in which every backend takes a step parameter (eps, alpha, lower, upper). The ops
layer (fastadv/_checks.py) builds these from what the user passed; the backends only read them."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Param(NamedTuple):
    """A step parameter: a float32 table of shape [Bp, Cp] on x's device (Bp in {1, B}, Cp in
    {1, C}), or, when `table` is None, one float32-representable `value`."""

    value: float
    table: torch.Tensor | None
