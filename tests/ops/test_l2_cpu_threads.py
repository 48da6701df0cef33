"""The CPU L2 loop's two ways of sharing a batch between threads (csrc/cpu/step_cpu_loops.h): whole
samples per thread, or every thread taking a part of each sample (a batch smaller than the thread
count). A sample's norms are sums of fixed blocks' partial sums added in block order, so the output
has the same bits with one thread or two, either way, and the rare second reductions (gradients
whose sum of squares overflows or underflows, infinite entries, an x_adv far outside the ball) run
in both. Every case is also compared with the reference, in every dtype and both layouts."""

import pytest
import torch
from support.backends import DTYPES, require_backend
from support.compare import assert_close
from support.op_inputs import to_layout

import fastadv

# 150528-element samples (ImageNet), 33 blocks of partial sums and a partial one; 3072 (CIFAR).
SHAPES = [(1, 3, 224, 224), (3, 3, 224, 224), (5, 3, 32, 32), (1, 3, 37, 41)]


def _gradients(shape, dtype, gen):
    """Sample 0 ordinary; the others (when the batch has them) with a sum of squares that
    overflows (1e30, bfloat16 and float32 only), underflows (1e-30, likewise), or infinite entries."""
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    wide = dtype != torch.float16  # float16 holds neither 1e30 nor 1e-30
    if shape[0] > 1:
        g[1] *= 1e30 if wide else 1e3
    if shape[0] > 2:
        g[2] *= 1e-30 if wide else 1e-3
        g[2].view(-1)[7] = float("nan")
    if shape[0] > 3:
        g[3].view(-1)[::997] = float("inf")
        g[3].view(-1)[5] = -float("inf")
    return g.to(dtype)


def _inputs(shape, dtype, layout, gen):
    x = torch.rand(shape, generator=gen, dtype=torch.float64).mul(0.8).add(0.1)
    x_adv = x + 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)
    if shape[0] > 4:
        x_adv[4] = x[4] + 1e20  # the projection's delta norm overflows
    grad = _gradients(shape, dtype, gen)
    eps = 0.5 + torch.rand(shape[0], generator=gen)
    return [to_layout(t.to(dtype), layout) for t in (x_adv, grad, x)] + [eps]


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _with_threads(threads, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_l2_cpu_same_bits_with_one_or_two_threads(dtype, layout, shape):
    require_backend("cpu", "cpu")
    gen = torch.Generator().manual_seed(sum(shape) + len(str(dtype)))
    x_adv, grad, x, eps = _inputs(shape, dtype, layout, gen)
    lower, upper = -float("inf"), float("inf")  # no clamp: the whole step and projection show
    for targeted in (False, True):

        def step(targeted=targeted):
            return fastadv.l2_step(x_adv, grad, x, eps, 0.3, lower, upper, targeted=targeted, backend="cpu")

        one, two = _with_threads(1, step), _with_threads(2, step)
        context = f"l2_step {dtype} {layout} targeted={targeted}"
        assert torch.equal(_bits(one), _bits(two)), context
        expected = fastadv.l2_step(x_adv, grad, x, eps, 0.3, lower, upper, targeted=targeted, backend="torch")
        assert_close(two, expected, context)

    def project():
        return fastadv.l2_project(x_adv, x, eps, lower, upper, backend="cpu")

    one, two = _with_threads(1, project), _with_threads(2, project)
    assert torch.equal(_bits(one), _bits(two)), f"l2_project {dtype} {layout}"
    assert_close(two, fastadv.l2_project(x_adv, x, eps, lower, upper, backend="torch"), f"l2_project {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_l2_cpu_16bit_sample_beyond_the_scratch(dtype, layout):
    """The 16-bit passes hand the perturbation to the write through float32 scratch up to 4M elements
    a sample (kL2DeltaScratchMax); a larger sample recomputes it in the write: the same bits with one
    thread or two, and the reference's values."""
    require_backend("cpu", "cpu")
    shape = (1, 3, 1184, 1184)  # 4205568 elements, just over 2^22
    gen = torch.Generator().manual_seed(len(str(dtype)) + len(layout))
    x_adv, grad, x, eps = _inputs(shape, dtype, layout, gen)
    for targeted in (False, True):

        def step(targeted=targeted):
            return fastadv.l2_step(x_adv, grad, x, eps, 0.3, 0.0, 1.0, targeted=targeted, backend="cpu")

        one, two = _with_threads(1, step), _with_threads(2, step)
        context = f"l2_step {dtype} {layout} targeted={targeted}"
        assert torch.equal(_bits(one), _bits(two)), context
        assert_close(
            two, fastadv.l2_step(x_adv, grad, x, eps, 0.3, 0.0, 1.0, targeted=targeted, backend="torch"), context
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (2, 3, 224, 224)], ids=["cifar", "imagenet"])
def test_l2_cpu_16bit_nan_gradient_entry_counts_as_zero(dtype, layout, shape):
    """The 16-bit steps sum the gradient's squares without the NaN test and run the filtered sum
    again only when that sum is NaN: a sample with NaN entries steps as with zeros there, bit for
    bit, and the samples without one as before; small samples (scratch kept) and large ones, one
    thread or two (a batch of one shared by a team)."""
    require_backend("cpu", "cpu")
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(shape, generator=gen).mul(0.8).add(0.1)
    x_adv = x + 0.02 * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    grad[0].view(-1)[[3, 1000, 2500]] = float("nan")
    zeroed = torch.nan_to_num(grad, nan=0.0)
    x_adv, grad, zeroed, x = (to_layout(t.to(dtype), layout) for t in (x_adv, grad, zeroed, x))
    for batch in (slice(0, 1), slice(0, shape[0])):
        for threads in (1, 2):

            def step(g, batch=batch):
                return fastadv.l2_step(x_adv[batch], g[batch], x[batch], 0.5, 0.3, 0.0, 1.0, backend="cpu")

            with_nan = _with_threads(threads, lambda: step(grad))
            with_zero = _with_threads(threads, lambda: step(zeroed))
            assert torch.equal(_bits(with_nan), _bits(with_zero)), f"{dtype} {layout} {batch} threads={threads}"
