"""One adapter from the backend contract (backends/__init__.py's `Backend`) to the four step ops
of a torch.library namespace. The C++ extension defines them as fastadv::* (csrc/schemas.h), the
Triton backend as fastadv_triton::* with the same schemas; both are called through this class.

A schema takes each parameter as an optional float32 table plus, when the table is None, its
entry of one `values` list: (eps, alpha, lower, upper) for steps, (eps, lower, upper) for
projections."""

from __future__ import annotations

import torch

from .step_param import StepParam

STEP_OPS = ("linf_step_out", "linf_project_out", "l2_step_out", "l2_project_out")


def _packed(*params: StepParam) -> tuple:
    return (*(p.table for p in params), [p.value for p in params])


class StepOps:
    """Calls `torch.ops.<namespace>.<op>` with checked StepParams (see fastadv/op_checks.py)."""

    def __init__(self, namespace: str):
        self.namespace = namespace

    def _op(self, name: str):
        return getattr(getattr(torch.ops, self.namespace), name)

    def linf_step_into(
        self, x_adv, grad, x, eps: StepParam, alpha: StepParam, lower: StepParam, upper: StepParam, targeted, out
    ):
        self._op("linf_step_out")(x_adv, grad, x, *_packed(eps, alpha, lower, upper), targeted, out)

    def linf_project_into(self, x_adv, x, eps: StepParam, lower: StepParam, upper: StepParam, out):
        self._op("linf_project_out")(x_adv, x, *_packed(eps, lower, upper), out)

    def l2_step_into(
        self, x_adv, grad, x, eps: StepParam, alpha: StepParam, lower: StepParam, upper: StepParam, targeted, out
    ):
        self._op("l2_step_out")(x_adv, grad, x, *_packed(eps, alpha, lower, upper), targeted, out)

    def l2_project_into(self, x_adv, x, eps: StepParam, lower: StepParam, upper: StepParam, out):
        self._op("l2_project_out")(x_adv, x, *_packed(eps, lower, upper), out)


def check_op_args(op: str, x_adv, grad, x, tables, values, out) -> None:
    """What every implementation of the ops may assume, checked in their fake (meta) kernels so
    that a wrong call fails while tracing too: x_adv, grad (for steps), x and out of one shape and
    floating dtype (grad may differ in dtype), tables float32 [Bp, Cp] with Bp in {1, B}, one value
    per parameter."""
    if x_adv.shape != x.shape or x_adv.shape != out.shape or (grad is not None and grad.shape != x_adv.shape):
        raise RuntimeError(f"{op}: x_adv, grad, x and out must have one shape")
    if x.dtype != x_adv.dtype or out.dtype != x_adv.dtype or not x_adv.is_floating_point():
        raise RuntimeError(f"{op}: x_adv, x and out must have one floating dtype")
    if grad is not None and not grad.is_floating_point():
        raise RuntimeError(f"{op}: grad must be a floating tensor")
    if len(values) != len(tables):
        raise RuntimeError(f"{op}: expected {len(tables)} values, got {len(values)}")
    batch = x_adv.shape[0] if x_adv.dim() else 1
    for table in tables:
        if table is None:
            continue
        if table.dtype != torch.float32 or table.dim() != 2 or table.shape[0] not in (1, batch):
            raise RuntimeError(f"{op}: a parameter table must be float32 [1 or B, 1 or C], got {tuple(table.shape)}")


def register_fake_kernels(namespace: str) -> None:
    """Fake kernels for the four ops of `namespace` (they only write `out`, so the fake ones only
    check), so that the ops trace under torch.compile(fullgraph=True)."""

    @torch.library.register_fake(f"{namespace}::linf_step_out")
    def _(x_adv, grad, x, eps, alpha, lower, upper, values, targeted, out):
        check_op_args("linf_step_out", x_adv, grad, x, (eps, alpha, lower, upper), values, out)

    @torch.library.register_fake(f"{namespace}::l2_step_out")
    def _(x_adv, grad, x, eps, alpha, lower, upper, values, targeted, out):
        check_op_args("l2_step_out", x_adv, grad, x, (eps, alpha, lower, upper), values, out)

    @torch.library.register_fake(f"{namespace}::linf_project_out")
    def _(x_adv, x, eps, lower, upper, values, out):
        check_op_args("linf_project_out", x_adv, None, x, (eps, lower, upper), values, out)

    @torch.library.register_fake(f"{namespace}::l2_project_out")
    def _(x_adv, x, eps, lower, upper, values, out):
        check_op_args("l2_project_out", x_adv, None, x, (eps, lower, upper), values, out)
