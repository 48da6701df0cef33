"""The Triton kernels' own guarantees, beyond agreeing with the reference (test_l2.py and the
L-inf tests): every masked load says what its masked-off lanes read."""

import ast
import pathlib

import numpy as np
import pytest
import torch
from conftest import assert_exact, require_backend

import fastadv
from fastadv.backends import triton as triton_backend

TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.float16: (2**-10, 2**-14), torch.bfloat16: (2**-7, 2**-14)}


def assert_close(actual, expected, context=""):
    rtol, atol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{context}: {m}")


def require_interpreter():
    require_backend("triton", "cpu")
    if not triton_backend._INTERPRET:
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py without a GPU)")


# ---- masked loads ----


def _tl_loads():
    """(line, keyword names, number of positional arguments) of every tl.load in the backend."""
    tree = ast.parse(pathlib.Path(triton_backend.__file__).read_text())
    return [
        (node.lineno, {k.arg for k in node.keywords}, len(node.args))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "tl"
    ]


def test_every_masked_load_says_what_masked_off_lanes_read():
    """Triton leaves a masked-off lane of tl.load undefined unless `other` is given; a sum over a
    block (the L2 norms) would add whatever is there."""
    loads = _tl_loads()
    assert len(loads) >= 5, loads  # the walk sees the kernels' loads
    masked = [(line, kw, n) for line, kw, n in loads if "mask" in kw or n >= 2]
    assert masked
    bad = [line for line, kw, n in masked if "other" not in kw and n < 3]
    assert not bad, f"masked tl.load without other= at lines {bad} of {triton_backend.__file__}"


POISON = 1024.0  # finite (a NaN would pass: NaN gradient entries count as 0) and exact in every dtype


@pytest.fixture
def poisoned_masked_loads(monkeypatch):
    """The interpreter reads 0 in a masked-off lane of a load without `other`; on a GPU the value
    is undefined. Here such a lane reads POISON instead."""
    require_interpreter()
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_masked_load

    def poisoned(self, ptrs, mask, other, *args, **kwargs):
        if other is None:
            ty = ptrs.get_element_ty()
            if ty == tl.bfloat16:  # the interpreter keeps bfloat16 as its bits in uint16
                data = np.full(ptrs.data.shape, np.float32(POISON).view(np.uint32) >> 16, dtype=np.uint16)
            else:
                data = np.full(ptrs.data.shape, POISON, dtype=interpreter._get_np_dtype(ty))
            other = interpreter.TensorHandle(data, ty)
        return original(self, ptrs, mask, other, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", poisoned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_masked_off_lanes_do_not_reach_the_results(poisoned_masked_loads, dtype):
    """Samples whose sizes are not a power of two (one program) or a multiple of the chunk (split
    reduction), so every kernel has masked-off lanes: the results still match the reference."""
    gen = torch.Generator().manual_seed(5)
    for shape in [(3, 5, 7), (2, 3, 61, 67), (37,)]:
        x = torch.rand(shape, generator=gen)
        x_adv = (x + 0.2 * torch.randn(shape, generator=gen)).to(dtype)
        grad = torch.randn(shape, generator=gen).to(dtype)
        x = x.to(dtype)
        eps = torch.rand(shape[0], generator=gen) + 0.5
        for norm in ("l2", "linf"):
            step, project = getattr(fastadv, f"{norm}_step"), getattr(fastadv, f"{norm}_project")
            check = assert_close if norm == "l2" else assert_exact
            args = (x_adv, grad, x, eps if norm == "l2" else 0.1, 0.3 if norm == "l2" else 0.01)
            check(step(*args, backend="triton"), step(*args, backend="torch"), f"{norm} step {shape}")
            args = (x_adv, x, eps if norm == "l2" else 0.1)
            check(project(*args, backend="triton"), project(*args, backend="torch"), f"{norm} project {shape}")
