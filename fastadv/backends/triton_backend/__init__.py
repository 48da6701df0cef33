"""The `triton` backend: the L-inf and L2 steps and projections as Triton kernels, registered as
torch.library ops fastadv_triton::{linf,l2}_{step,project}_out (the schemas of csrc/schemas.h) so
that they trace under torch.compile and CUDA graphs.

Three layers with one name each: the @triton.jit kernels (_linf_kernel in linf.py,
_l2_sample_kernel and _l2_chunk_kernel in l2.py, their shared helpers in step_math.py), their
launchers (_launch_linf, _launch_l2, beside them) and the registered ops (registration.py), which
the public fastadv.ops functions call through backends/step_ops.py. Runs on CUDA tensors, and on
CPU tensors under TRITON_INTERPRET=1 (how the tests check it without a GPU), read at each launch
(launch.py), so the variable may be set after fastadv is imported. Importing this package never
touches a GPU; it needs Triton, so the registry (backends/__init__.py) imports it only when Triton
imports.
"""

import torch

from .launch import interpreting
from .registration import l2_project_into, l2_step_into, linf_project_into, linf_step_into

__all__ = ["NAME", "interpreting", "l2_project_into", "l2_step_into", "linf_project_into", "linf_step_into",
           "unavailable_reason"]  # fmt: skip

NAME = "triton"


def unavailable_reason(device: torch.device | None = None) -> str | None:
    if device is None:
        if torch.cuda.is_available() or interpreting():
            return None
        return "no CUDA GPU is available (Triton runs CPU tensors only under TRITON_INTERPRET=1)"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return f"Triton runs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), these are on {device}"
