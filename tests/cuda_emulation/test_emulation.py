"""The CUDA emulation (tests/cuda_emulation): it builds, each of its checks fires on a kernel with
that bug, and the CUDA launchers keep their grids within the hardware limits and index past 2^31
elements (tensors over virtual memory, only some blocks run). The op suite itself runs on the
emulated backends through FAST_BACKENDS (ops/test_linf_exact.py, ops/test_l2.py, ops/test_linf_layout.py)."""

import os

import pytest
import torch
from support.compare import assert_close, assert_exact

import fastadv
from cuda_emulation import backend as emulation

pytestmark = pytest.mark.slow  # the emulated CUDA kernels (built on first use, about a minute)

ORDERS = ("forward", "reverse", "random")


@pytest.fixture(autouse=True)
def _built():
    reason = emulation.build_error()
    if reason is not None:
        if os.environ.get("FASTADV_EXPECT_CUDA_KERNELS") == "1":
            pytest.fail(f"CI expects the CUDA emulation to build: {reason}")
        pytest.skip(reason)


def _selftest(case: str, order: str = "forward") -> torch.Tensor:
    out = torch.zeros(2 + 1024)
    control = torch.ops.fastadv_cuda_emulation
    control.configure(order, 1, [], True, 0)
    control.begin_op(7)
    try:
        torch.ops.fastadv_cuda_emulation_selftest.run(case, out)
    finally:
        control.end_op()
    return out


@pytest.mark.parametrize("order", ORDERS)
def test_a_correct_kernel_runs_in_the_chosen_thread_order(order):
    out = _selftest("block_sum", order)
    assert out[0].item() == sum(range(256)), "shuffles, shared memory and the barrier"
    started = out[2:258].long().tolist()
    assert sorted(started) == list(range(256))
    if order == "forward":
        assert started == list(range(256))
    elif order == "reverse":
        assert started == list(range(255, -1, -1))
    else:
        assert started not in (list(range(256)), list(range(255, -1, -1)))


def test_shared_memory_starts_as_nan():
    assert torch.isnan(_selftest("read_unwritten_shared")[0])


CHECKS = [
    ("barrier_in_branch", "cannot all go on"),
    ("barriers_at_two_lines", "cannot all go on"),
    ("shuffle_in_branch", "not reached by lane|cannot all go on"),
    ("shuffle_on_partial_warp", "partial warp of 16 lanes"),
    ("misaligned_vector_load", "misaligned vector access"),
    ("write_far_away", "invalid memory access"),
    ("grid_over_2_31", r"gridDim.x = 2147483648"),
    ("grid_over_2_32", r"gridDim.x = 4294967301"),
    ("grid_y_over_65535", "gridDim.y/z = 65536"),
    ("block_over_1024", r"blockDim \(1025, 1, 1\)"),
    ("default_stream", "on stream 0 but the current stream is 7"),
    ("no_guard", "without a device guard"),
    ("unchecked_launch", "not followed by an error check"),
    ("unchecked_last_launch", "not followed by an error check"),
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case, message", CHECKS, ids=[c for c, _ in CHECKS])
def test_each_check_fails_loudly(case, message, order):
    with pytest.raises(RuntimeError, match=message):
        _selftest(case, order)
    _selftest("block_sum", order)  # and the emulation works on after the failure


def _virtual(*shape, dtype=torch.float16):
    return emulation.virtual_tensor(shape, dtype)


@pytest.mark.parametrize("samples", [2**31 + 8, 2**32 + 5])
@pytest.mark.parametrize("op", ["l2_step", "l2_project", "linf_step"])
def test_grids_stay_within_the_limits_for_any_batch(op, samples):
    """One element per sample: the L2 launcher once asked for one block per sample, which fails
    past 2^31 - 1 samples and is silently truncated past 2^32. Launches are checked, not run."""
    x_adv, grad, x = _virtual(samples), _virtual(samples), _virtual(samples)
    with emulation.geometry_only():
        if op.endswith("project"):
            getattr(fastadv, op)(x_adv, x, 1.0, out=x_adv, backend="cuda-emulated-forward")
        else:
            getattr(fastadv, op)(x_adv, grad, x, 1.0, 0.1, out=x_adv, backend="cuda-emulated-forward")
    (launch,) = emulation.last_launches
    assert launch["grid"] == (4 * 132 * 2048 // 256, 1, 1), launch  # capped: a few waves of resident blocks
    assert launch["blocks_run"] == 0


def test_linf_indexes_past_2_31_elements():
    """2^31 + 128 float16 elements, two samples with their own lower bound; only the block that
    handles the last pack runs (step_kernels.cuh: thread T of the grid handles packs T,
    T + stride, ...). Its packs, past element 2^31 too, must hold their sample's bound."""
    per_sample = 2**30 + 64
    x_adv, grad, x = _virtual(2, per_sample), _virtual(2, per_sample), _virtual(2, per_sample)
    lower = torch.tensor([0.25, 0.125])  # x_adv = x = grad = 0, so out = lower of the sample
    args = (x_adv, grad, x, 1.0, 0.5, lower, 1.0)
    with emulation.geometry_only():
        fastadv.linf_step(*args, out=x_adv, backend="cuda-emulated-forward")
    (launch,) = emulation.last_launches
    grid, threads = launch["grid"][0], launch["block"][0]
    vec, packs, stride = 8, 2 * per_sample // 8, grid * threads
    block = ((packs - 1) % stride) // threads
    with emulation.sampled_blocks(block):
        fastadv.linf_step(*args, out=x_adv, backend="cuda-emulated-forward")
    (launch,) = emulation.last_launches
    assert launch["blocks_run"] == 1 and launch["kernel"].startswith("linf_kernel")
    first = block * threads + torch.arange(threads, dtype=torch.int64)
    rounds = (packs - first + stride - 1) // stride
    written = torch.cat([first + r * stride for r in (0, 1)] + [first + (rounds - k) * stride for k in (2, 1)])
    elements = (written[:, None] * vec + torch.arange(vec)).flatten()
    assert elements.max().item() == 2 * per_sample - 1
    flat = x_adv.view(-1)
    expected = torch.where(elements < per_sample, 0.25, 0.125)
    assert torch.equal(flat[elements].float(), expected)
    assert flat[0].item() == 0.0, "block 0 did not run, so element 0 must be untouched"


def test_l2_indexes_past_2_31_elements():
    """528000 samples of 4096 float16 elements (2^31 + 15.6M elements); only the last block runs:
    it handles samples b = 4223 mod 4224 (step_kernels.cuh), whose inputs are random and whose
    results must equal the reference."""
    n, grid = 4096, 4224
    batch = (2**31 // n // grid + 1) * grid
    x_adv, grad, x = _virtual(batch, n), _virtual(batch, n), _virtual(batch, n)
    rows = torch.arange(grid - 1, batch, grid)
    gen = torch.Generator().manual_seed(5)
    x[rows] = torch.rand(len(rows), n, generator=gen).half()
    x_adv[rows] = (x[rows].float() + 0.05 * torch.randn(len(rows), n, generator=gen)).half()
    grad[rows] = torch.randn(len(rows), n, generator=gen).half()
    eps = torch.rand(batch, generator=gen) * 3
    before = [t[rows].clone() for t in (x_adv, grad, x)]
    with emulation.sampled_blocks(-1):
        fastadv.l2_step(x_adv, grad, x, eps, 0.5, out=x_adv, backend="cuda-emulated-forward")
    (launch,) = emulation.last_launches
    assert launch["grid"] == (grid, 1, 1) and launch["blocks_run"] == 1
    assert (rows * n).max().item() >= 2**31
    expected = fastadv.l2_step(*before, eps[rows], 0.5, backend="torch")
    assert_close(x_adv[rows], expected, "the last block's samples")
    assert not bool(x_adv[0].any()), "sample 0 (block 0, not run) must be untouched"


@pytest.mark.parametrize("backend", emulation.NAMES)
def test_grid_stride_loops_on_a_small_gpu(backend):
    """On the emulated GPU of 2 multiprocessors grids are capped at 64 blocks, so every kernel
    loops: L-inf over packs and the tail, L2 over one-block samples and over split chunks."""
    gen = torch.Generator().manual_seed(9)
    cases = [("linf", (3, 33335)), ("l2", (200, 3, 4, 4)), ("l2", (70, 5000))]
    for norm, shape in cases:
        x = torch.rand(shape, generator=gen)
        x_adv = x + 0.1 * torch.randn(shape, generator=gen)
        grad = torch.randn(shape, generator=gen)
        eps = torch.rand(shape[0], generator=gen)
        step = getattr(fastadv, f"{norm}_step")
        with emulation.small_gpu():
            actual = step(x_adv, grad, x, eps, 0.05, backend=backend)
        assert all(launch["grid"][0] == 64 for launch in emulation.last_launches), emulation.last_launches
        expected = step(x_adv, grad, x, eps, 0.05, backend="torch")
        if norm == "linf":
            assert_exact(actual, expected, f"{backend} {shape}")
        else:
            assert_close(actual, expected, f"{backend} {shape}")
