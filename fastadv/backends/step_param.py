"""The form in which every backend takes a step parameter (eps, alpha, lower, upper): one
`StepParam` each, the Python side of csrc/step_math.h's StepParam. The ops layer builds them from
what the user passed (fastadv/op_checks.py's to_step_param); the backends only read them. (An
attack's four parameters as the user gave them are an AttackParams, fastadv/attacks/params.py.)"""

from __future__ import annotations

from typing import NamedTuple

import torch


class StepParam(NamedTuple):
    """A step parameter: a float32 table of shape [Bp, Cp] on x's device (Bp in {1, B}, Cp in
    {1, C}), or, when `table` is None, one float32-representable `value`."""

    value: float
    table: torch.Tensor | None
