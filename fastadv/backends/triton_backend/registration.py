"""The registered ops fastadv_triton::{linf,l2}_{step,project}_out (torch.library.triton_op,
the schemas of csrc/schemas.h), so that the kernels trace under torch.compile and CUDA graphs,
and the backend's four entry points: those ops called through the shared adapter
(backends/step_ops.py)."""

import torch

from ..step_ops import StepOps
from .l2 import _launch_l2
from .linf import _launch_linf


@torch.library.triton_op("fastadv_triton::linf_step_out", mutates_args={"out"})
def _linf_step_out(
    x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
    eps: torch.Tensor | None, alpha: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], targeted: bool, out: torch.Tensor,
) -> None:  # fmt: skip
    _launch_linf(x_adv, grad, x, (eps, alpha, lower, upper), values, targeted, out)


@torch.library.triton_op("fastadv_triton::linf_project_out", mutates_args={"out"})
def _linf_project_out(
    x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], out: torch.Tensor,
) -> None:  # fmt: skip
    eps_v, lower_v, upper_v = values
    _launch_linf(x_adv, None, x, (eps, None, lower, upper), [eps_v, 0.0, lower_v, upper_v], False, out)


@torch.library.triton_op("fastadv_triton::l2_step_out", mutates_args={"out"})
def _l2_step_out(
    x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
    eps: torch.Tensor | None, alpha: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], targeted: bool, out: torch.Tensor,
) -> None:  # fmt: skip
    _launch_l2(x_adv, grad, x, (eps, alpha, lower, upper), values, targeted, out)


@torch.library.triton_op("fastadv_triton::l2_project_out", mutates_args={"out"})
def _l2_project_out(
    x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | None, lower: torch.Tensor | None,
    upper: torch.Tensor | None, values: list[float], out: torch.Tensor,
) -> None:  # fmt: skip
    eps_v, lower_v, upper_v = values
    _launch_l2(x_adv, None, x, (eps, None, lower, upper), [eps_v, 0.0, lower_v, upper_v], False, out)


# The backend's four entry points: the registered ops above, called through the shared adapter.
_OPS = StepOps("fastadv_triton")
linf_step_into = _OPS.linf_step_into
linf_project_into = _OPS.linf_project_into
l2_step_into = _OPS.l2_step_into
l2_project_into = _OPS.l2_project_into
