"""Shared test set-up. Without a GPU, Triton kernels run on CPU tensors in the interpreter; the
variable must be set before fastadv (and so Triton's @jit) is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from cuda_emulation import backend as cuda_emulation  # noqa: E402

from fastadv.backends import BACKENDS, register_backend  # noqa: E402

# The CUDA kernels compiled for the host (tests/cuda_emulation), in three thread orders: every
# op test that runs the fast backends runs them too. They build on first use (about a minute).
for _name, _backend in cuda_emulation.BACKENDS.items():
    if _name not in BACKENDS:
        register_backend(_name, _backend)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAST_BACKENDS = ("triton", "cpu", "cuda") + cuda_emulation.NAMES


def device_params():
    """The devices to test, with the cuda one marked (so `-m cuda` selects the GPU suite)."""
    return [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES] + (
        [] if "cuda" in DEVICES else [pytest.param("cuda", marks=[pytest.mark.cuda])]
    )


def require_backend(name: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    reason = BACKENDS[name].unavailable_reason(torch.device(device))
    if reason is not None:
        pytest.skip(f"backend {name} unavailable on {device}: {reason}")


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, context: str = "") -> None:
    """Bitwise-equal values (NaN equal to NaN, -0.0 equal to 0.0); on failure, the first mismatches."""
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.float().cpu(), expected.float().cpu()
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    if bool(same.all()):
        return
    bad = (~same).nonzero()[:8]
    rows = [f"  at {tuple(i.tolist())}: got {a[tuple(i)].item()!r}, expected {e[tuple(i)].item()!r}" for i in bad]
    raise AssertionError(f"{context}: {int((~same).sum())} of {a.numel()} elements differ\n" + "\n".join(rows))


def pytest_configure(config):
    # `-m "not slow"` skips the subprocess torchrun runs, the SIGKILL resume and the long training runs
    config.addinivalue_line("markers", "slow: takes a minute or more (subprocesses, torchrun, long training)")
