"""Test set-up: without a GPU, Triton kernels run on CPU tensors in the interpreter (the triton
backend reads TRITON_INTERPRET at each launch); the emulated CUDA backends are registered; the
session's digits model. Shared helpers are in support/, by purpose."""

import os

import pytest
import torch
from cuda_emulation import backend as cuda_emulation

from fastadv.backends import BACKENDS, register_backend

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The CUDA kernels compiled for the host (tests/cuda_emulation), in three thread orders: every
# op test that runs the fast backends runs them too. They build on first use (about a minute).
for _name, _backend in cuda_emulation.BACKENDS.items():
    if _name not in BACKENDS:
        register_backend(_name, _backend)


@pytest.fixture(scope="session")
def digits_model():
    """The seeded digits CNN (eval mode) and the test split, trained once per session. Attacks must
    leave the model as they found it (the safety tests check), so the modules share it; a test
    that changes it takes its own copy from support.models.digits_model()."""
    from support.models import digits_model as fresh_copy

    return fresh_copy()
