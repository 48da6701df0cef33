"""Layouts, out= and in-place semantics, empty and edge-valued inputs, and >2^31 elements."""

import pytest
import torch
from support.backends import FAST_BACKENDS, device_params, require_backend
from support.compare import assert_exact
from support.op_inputs import to_layout

import fastadv

BACKENDS_HERE = ("torch",) + FAST_BACKENDS


def _inputs(shape=(2, 3, 5, 5), dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen)
    return (
        (x + 0.1 * torch.randn(shape, generator=gen)).to(device, dtype),
        torch.randn(shape, generator=gen).to(device),
        x.to(device, dtype),
    )


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_out_keeps_x_adv_layout_and_inputs_are_untouched(device, backend):
    require_backend(backend, device)
    x_adv, grad, x = _inputs(device=device)
    for layout, check in [
        ("contiguous", lambda t: t.is_contiguous()),
        ("channels_last", lambda t: t.is_contiguous(memory_format=torch.channels_last)),
    ]:
        xa = to_layout(x_adv, layout)
        copies = [t.clone() for t in (xa, grad, x)]
        out = fastadv.linf_step(xa, grad, x, 0.05, 0.02, backend=backend)
        assert check(out), f"out lost the {layout} layout"
        for before, after in zip(copies, (xa, grad, x), strict=True):
            assert_exact(after, before, "an input was modified")
        assert_exact(out, fastadv.linf_step(x_adv, grad, x, 0.05, 0.02, backend="torch"), layout)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_in_place_on_a_strided_view_writes_only_the_view(device, backend):
    require_backend(backend, device)
    x_adv, grad, x = _inputs(device=device)
    expected = fastadv.linf_step(x_adv, grad, x, 0.05, 0.02, backend="torch")
    base = torch.full((2, 3, 5, 10), -5.0, device=device)
    view = base[..., ::2]
    view.copy_(x_adv)
    result = fastadv.linf_step(view, grad, x, 0.05, 0.02, out=view, backend=backend)
    assert result is view
    assert_exact(view, expected, "in place on a view")
    assert bool((base[..., 1::2] == -5.0).all()), "elements outside the view were written"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_out_with_other_strides_is_filled(device, backend):
    require_backend(backend, device)
    x_adv, grad, x = _inputs(device=device)
    out = torch.zeros(5, 5, 3, 2, device=device).permute(3, 2, 0, 1)  # dense, but neither layout
    fastadv.linf_step(x_adv, grad, x, 0.05, 0.02, out=out, backend=backend)
    assert_exact(out, fastadv.linf_step(x_adv, grad, x, 0.05, 0.02, backend="torch"), "permuted out")


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_empty_tensors_return_at_once(backend):
    require_backend(backend, "cpu")
    x = torch.rand(0, 3, 4, 4)
    out = fastadv.linf_step(x, x.clone(), x.clone(), 0.1, 0.1, backend=backend)
    assert out.shape == (0, 3, 4, 4)
    given = torch.empty(0, 3, 4, 4)
    assert fastadv.linf_project(x, x.clone(), 0.1, out=given, backend=backend) is given


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("value", [0.0, 1.401298464324817e-45, 1e-40, 1e30, 3.4e38, 3.4028234663852886e38])
def test_extreme_parameter_values(backend, value):
    """Zero, subnormal and huge finite eps/alpha (up to float32's largest) agree with the reference
    (found by hypothesis)."""
    require_backend(backend, "cpu")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x_adv, grad, x = _inputs(dtype=dtype)
        for eps, alpha in ((value, 0.01), (0.05, value), (value, value)):
            args = (x_adv, grad, x, eps, alpha, -1.0, 2.0)
            expected = fastadv.linf_step(*args, backend="torch")
            assert_exact(fastadv.linf_step(*args, backend=backend), expected, f"{dtype} eps={eps} alpha={alpha}")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e39], ids=["inf", "nan", "beyond-float32"])
@pytest.mark.parametrize("name", ["eps", "alpha"])
@pytest.mark.parametrize("op", [fastadv.linf_step, fastadv.l2_step], ids=["linf", "l2"])
def test_non_finite_eps_and_alpha_are_refused(op, name, value):
    """An infinite budget or step has no meaning (with inf eps a NaN step became inf pixels): a
    ValueError naming the argument, for numbers and CPU tensors; infinite bounds stay allowed."""
    x_adv, grad, x = _inputs()
    params = {"eps": 0.1, "alpha": 0.01}
    for given in (value, torch.tensor(value), torch.tensor([0.1, value])):
        with pytest.raises(ValueError, match=name):
            op(x_adv, grad, x, **{**params, name: given}, backend="torch")
    out = op(x_adv, grad, x, **params, lower=-float("inf"), upper=float("inf"), backend="torch")
    assert torch.isfinite(out).all()


def test_parameter_tensor_dtypes_and_0d_device_tensors():
    x_adv, grad, x = _inputs()
    expected = fastadv.linf_step(x_adv, grad, x, 0.25, 0.125, backend="torch")
    for eps in (
        torch.tensor(0.25, dtype=torch.float64),
        torch.tensor([0.25, 0.25], dtype=torch.float16),
        torch.tensor(1) / 4,
        torch.full((2, 1, 1, 1), 0.25),
    ):
        assert_exact(fastadv.linf_step(x_adv, grad, x, eps, 0.125), expected, f"eps given as {eps.dtype} {eps.shape}")


def _available_memory_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        return kib / 2**20
    except (OSError, StopIteration):
        return 0.0


@pytest.mark.slow
@pytest.mark.bigmem
@pytest.mark.parametrize("backend", ("cpu", "cuda", "triton"))
def test_more_than_2_31_elements(backend):
    """64-bit indexing: a per-sample parameter must be read right past element 2^31."""
    device = "cuda" if backend in ("cuda", "triton") else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the interpreter is too slow for 2^31 elements; runs on a GPU")
    require_backend(backend, device)
    if device == "cpu" and _available_memory_gib() < 12:
        pytest.skip("needs about 9 GiB of free memory")
    per_sample = 2**30 + 64
    x = torch.full((2, per_sample), 0.5, dtype=torch.float16, device=device)
    x_adv = torch.full_like(x, 0.5)
    eps = torch.tensor([0.25, 0.125], device=device)
    # grad = x: inputs may share memory; only out may not overlap them. In place saves 4 GiB.
    fastadv.linf_step(x_adv, x, x, eps, 1.0, out=x_adv, backend=backend)
    tail = x_adv[1, -70:].float()
    assert bool((tail == 0.625).all()), f"sample 1 past element 2^31: {tail.unique()}"
    assert bool((x_adv[0, -70:].float() == 0.75).all()) and bool((x_adv[0, :70].float() == 0.75).all())


def _offset_view(t: torch.Tensor, offset: int) -> torch.Tensor:
    """The values of t in a contiguous view that starts `offset` elements into a larger buffer:
    its address is not 16-byte aligned for offsets that are not a multiple of 16 bytes."""
    buffer = torch.full((t.numel() + 16,), float("nan"), dtype=t.dtype, device=t.device)
    view = buffer[offset : offset + t.numel()].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_misaligned_views(backend, norm):
    """Vectorized kernels need every pointer aligned; views at odd offsets must take the other path
    and still equal the reference (each of x_adv, grad, x and out misaligned in turn)."""
    require_backend(backend, "cpu")
    gen = torch.Generator().manual_seed(13)
    step = getattr(fastadv, f"{norm}_step")
    for dtype, grad_dtype in ((torch.float32, torch.float32), (torch.float16, torch.float32), (torch.bfloat16,) * 2):
        x = torch.rand(3, 1001, generator=gen).to(dtype)
        x_adv = (x.float() + 0.1 * torch.randn(3, 1001, generator=gen)).to(dtype)
        grad = torch.randn(3, 1001, generator=gen).to(grad_dtype)
        expected = step(x_adv, grad, x, 0.05, 0.02, backend="torch")
        for offset in (1, 2, 3, 4, 7):
            for which in ("x_adv", "grad", "x", "out"):
                args = {"x_adv": x_adv, "grad": grad, "x": x}
                if which != "out":
                    args[which] = _offset_view(args[which], offset)
                out = _offset_view(torch.zeros_like(x_adv), offset) if which == "out" else None
                actual = step(args["x_adv"], args["grad"], args["x"], 0.05, 0.02, out=out, backend=backend)
                context = f"{backend} {dtype} {which} offset {offset}"
                if norm == "linf":
                    assert_exact(actual, expected, context)
                else:
                    torch.testing.assert_close(
                        actual,
                        expected,
                        rtol=1e-5 if dtype == torch.float32 else 2**-7,
                        atol=1e-6 if dtype == torch.float32 else 2**-14,
                        msg=context,
                    )
