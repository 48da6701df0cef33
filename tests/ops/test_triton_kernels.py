"""The Triton kernels' own guarantees, beyond agreeing with the reference (test_l2.py and the
L-inf tests): every masked load says what its masked-off lanes read, the L2 kernels' grid is
capped (the programs take the samples, or chunks, in turn), so any batch size launches, and the
interpreter mode is read when a kernel launches, not when fastadv is imported."""

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from support.backends import require_backend
from support.compare import assert_exact

import fastadv

triton_backend = pytest.importorskip("fastadv.backends.triton_backend")  # needs Triton
from fastadv.backends.triton_backend import l2  # noqa: E402 (after the skip: it needs Triton)

pytestmark = [pytest.mark.slow, pytest.mark.triton]  # the Triton interpreter

TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.float16: (2**-10, 2**-14), torch.bfloat16: (2**-7, 2**-14)}


def assert_close(actual, expected, context=""):
    rtol, atol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{context}: {m}")


def require_interpreter():
    require_backend("triton", "cpu")
    if not triton_backend.interpreting():
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py without a GPU)")


# ---- masked loads ----


def _tl_loads():
    """(file, line, keyword names, number of positional arguments) of every tl.load in the
    backend's modules."""
    return [
        (path.name, node.lineno, {k.arg for k in node.keywords}, len(node.args))
        for path in sorted(pathlib.Path(triton_backend.__file__).parent.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
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
    masked = [(name, line, kw, n) for name, line, kw, n in loads if "mask" in kw or n >= 2]
    assert masked
    bad = [f"{name} line {line}" for name, line, kw, n in masked if "other" not in kw and n < 3]
    assert not bad, f"masked tl.load without other= at {bad} in {pathlib.Path(triton_backend.__file__).parent}"


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


# ---- the L2 grid ----

BIG_BATCHES = [2**31 + 8, 2**32 + 5]
SAMPLE_SIZES = [1, 2, 175, 8192, 8193, 3 * 224 * 224]


def _check_plan(plan, batch, sample_size, cap):
    assert 1 <= plan.programs <= min(cap, plan.n_work)
    assert plan.programs <= 2**31 - 1  # CUDA's limit on a grid's first axis
    assert plan.split == (sample_size > l2._L2_ONE_PROGRAM)
    if plan.split:
        assert plan.block == l2._L2_CHUNK
        assert (plan.n_chunks - 1) * plan.block < sample_size <= plan.n_chunks * plan.block
    else:
        assert plan.n_chunks == 1 and plan.block >= sample_size and plan.block & (plan.block - 1) == 0
        assert plan.block < 2 * sample_size or plan.block == 1
    assert plan.n_work == batch * plan.n_chunks
    # Program p takes items p, p + programs, ...: each item once, every program some.
    rounds = -(-plan.n_work // plan.programs)
    assert (rounds - 1) * plan.programs < plan.n_work <= rounds * plan.programs
    # The last element's offset fits the kernels' 64-bit arithmetic.
    assert batch * sample_size - 1 < 2**63


@pytest.mark.parametrize("batch", BIG_BATCHES)
@pytest.mark.parametrize("sample_size", SAMPLE_SIZES)
def test_l2_grid_is_capped_for_huge_batches(batch, sample_size):
    """The grid for more than 2^31 samples (or chunks): computed, not allocated."""
    plan = l2._l2_launch(batch, sample_size)
    _check_plan(plan, batch, sample_size, l2._L2_MAX_PROGRAMS)
    assert plan.programs == l2._L2_MAX_PROGRAMS


@pytest.mark.parametrize("batch", [1, 3, 1000, *BIG_BATCHES])
@pytest.mark.parametrize("sample_size", SAMPLE_SIZES)
def test_l2_grid_with_a_lowered_cap(monkeypatch, batch, sample_size):
    monkeypatch.setattr(l2, "_L2_MAX_PROGRAMS", 7)
    plan = l2._l2_launch(batch, sample_size)
    _check_plan(plan, batch, sample_size, 7)
    assert plan.programs == min(7, plan.n_work)


def test_l2_grid_below_the_cap_is_one_program_per_item():
    assert l2._L2_MAX_PROGRAMS < 2**31
    assert l2._l2_launch(512, 3072).programs == 512  # CIFAR: one program per sample
    assert l2._l2_launch(64, 3 * 224 * 224).programs == 64 * 37  # ImageNet: one per chunk


@pytest.mark.parametrize(
    "shape",
    [(50, 3, 5, 5), (4, 3, 61, 67)],  # one program per sample; split (3 chunks a sample: 12 items)
    ids=["one-program", "split"],
)
def test_l2_capped_grid_matches_reference_on_every_sample(monkeypatch, shape):
    """With the cap lowered to 3 programs, far fewer than the work items, every sample still equals
    the reference, and bit for bit the result of the default grid (same math, fixed order)."""
    require_interpreter()
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(shape, generator=gen)
    x_adv = x + 0.2 * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    grad[1] = 0.0  # a sample that does not move
    eps = torch.rand(shape[0], generator=gen) * 2 + 0.1
    alpha = torch.rand(shape[0], generator=gen)
    lower = torch.tensor([-0.1, 0.0, 0.05]).view(1, 3, 1, 1)
    step_args, project_args = (x_adv, grad, x, eps, alpha, lower, 1.0), (x_adv, x, eps, lower, 1.0)
    uncapped = [
        fastadv.l2_step(*step_args, backend="triton"),
        fastadv.l2_step(*step_args, targeted=True, backend="triton"),
        fastadv.l2_project(*project_args, backend="triton"),
    ]

    grids = []
    real_wrap = l2._wrap

    class Recorder:
        def __init__(self, kernel):
            self.launcher = real_wrap(kernel)

        def __getitem__(self, grid):
            grids.append(grid)
            return self.launcher[grid]

    monkeypatch.setattr(l2, "_L2_MAX_PROGRAMS", 3)
    monkeypatch.setattr(l2, "_wrap", Recorder)
    capped = [
        fastadv.l2_step(*step_args, backend="triton"),
        fastadv.l2_step(*step_args, targeted=True, backend="triton"),
        fastadv.l2_project(*project_args, backend="triton"),
    ]
    expected = [
        fastadv.l2_step(*step_args, backend="torch"),
        fastadv.l2_step(*step_args, targeted=True, backend="torch"),
        fastadv.l2_project(*project_args, backend="torch"),
    ]
    assert grids and all(grid == (3,) for grid in grids), grids
    for name, got, ref, free in zip(("step", "targeted step", "project"), capped, expected, uncapped, strict=True):
        for b in range(shape[0]):
            assert_close(got[b], ref[b], f"{name}, sample {b} of {shape}")
        assert_exact(got, free, f"{name}: capped grid against the default one")


# ---- the interpreter mode ----

LATE_INTERPRETER = textwrap.dedent(
    """
    import os
    import torch
    import fastadv
    from fastadv.backends import triton_backend

    cpu = torch.device("cpu")
    assert not triton_backend.interpreting() and triton_backend.unavailable_reason(cpu) is not None
    os.environ["TRITON_INTERPRET"] = "1"  # after fastadv, and so Triton, is imported
    assert triton_backend.unavailable_reason(cpu) is None
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, 5, 7, generator=gen)
    x_adv = x + 0.2 * torch.randn(x.shape, generator=gen)
    grad = torch.randn(x.shape, generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        args = (x_adv.to(dtype), grad.to(dtype), x.to(dtype))
        for op, budget in ((fastadv.linf_step, (0.03, 0.01)), (fastadv.l2_step, (0.5, 0.2))):
            got, ref = (op(*args, *budget, backend=b) for b in ("triton", "torch"))
            torch.testing.assert_close(got, ref, rtol=2**-7, atol=2**-14)
            assert op is fastadv.l2_step or torch.equal(got, ref)
        got, ref = (fastadv.l2_project(args[0], args[2], 0.1, backend=b) for b in ("triton", "torch"))
        torch.testing.assert_close(got, ref, rtol=2**-7, atol=2**-14)
    print("interpreted after import")
    """
)


def test_interpreter_mode_is_read_when_a_kernel_launches():
    """TRITON_INTERPRET set after fastadv is imported still runs the kernels on CPU tensors in
    Triton's interpreter (L-inf bit for bit, L2 to the tolerance of its sums), so no test set-up
    has to set it before importing fastadv."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", LATE_INTERPRETER], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "interpreted after import" in result.stdout
