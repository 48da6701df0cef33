"""torch.library registration: opcheck, torch.compile(fullgraph=True), CUDA graphs, backend choice, build."""

import os

import pytest
import torch
from cuda_emulation import backend as cuda_emulation
from support.backends import require_backend
from support.compare import assert_exact

import fastadv
from fastadv.backends import BACKENDS, resolve_backend


def _op_samples(device="cpu", per_channel_eps=True):
    """Arguments of the *_step_out ops: scalar, table and channels_last cases (L2 eps per sample)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 4, 4, generator=gen).to(device)
    x_adv = (x.cpu() + 0.1 * torch.randn(2, 3, 4, 4, generator=gen)).to(device)
    grad = torch.randn(2, 3, 4, 4, generator=gen).to(device)
    per_channel = torch.rand(1, 3, generator=gen).to(device) * 0.1
    per_sample = torch.rand(2, 1, generator=gen).to(device) * 0.1
    eps_table = per_channel if per_channel_eps else per_sample
    yield (x_adv, grad, x, None, None, None, None, [0.03, 0.01, 0.0, 1.0], False, torch.empty_like(x))
    yield (x_adv, grad.half(), x, eps_table, per_sample, per_channel, None, [0.0, 0.0, 0.0, 1.0], True,
           torch.empty_like(x))  # fmt: skip
    cl = x.contiguous(memory_format=torch.channels_last)
    cl_grad = grad.contiguous(memory_format=torch.channels_last)
    yield (x_adv.contiguous(memory_format=torch.channels_last), cl_grad, cl, eps_table, None, None, per_channel + 0.9,
           [0.0, 0.02, -0.1, 1.1], False, torch.empty_like(cl))  # fmt: skip


@pytest.mark.parametrize("namespace", ["fastadv", "fastadv_triton"])
def test_opcheck(namespace):
    require_backend("cpu" if namespace == "fastadv" else "triton", "cpu")
    ns = getattr(torch.ops, namespace)
    # The interpreter cannot run on fake tensors, so the Triton op is checked eagerly only.
    utils = None if namespace == "fastadv" else ("test_schema",)
    kwargs = {} if utils is None else {"test_utils": utils}
    for norm in ("linf", "l2"):
        step_op, project_op = getattr(ns, f"{norm}_step_out"), getattr(ns, f"{norm}_project_out")
        for sample in _op_samples(per_channel_eps=norm == "linf"):
            torch.library.opcheck(step_op, sample, **kwargs)
            x_adv, _, x, eps, _, lower, upper, values, _, out = sample
            torch.library.opcheck(project_op, (x_adv, x, eps, lower, upper, [values[0]] + values[2:], out), **kwargs)


def test_torch_compile_fullgraph_matches_eager():
    require_backend("cpu", "cpu")
    torch._dynamo.reset()
    eps = torch.tensor([0.02, 0.05, 0.08]).view(1, 3, 1, 1)

    def attack_step(x_adv, grad, x):
        y = fastadv.linf_step(x_adv, grad, x, eps, 0.01, backend="cpu")
        y = fastadv.linf_step(y, grad, x, 0.03, 0.01, targeted=True, backend="cpu")
        y = fastadv.l2_step(y, grad, x, 0.5, 0.1, lower=eps, backend="cpu")
        y = fastadv.l2_project(y * 1.01, x, torch.full((x.shape[0],), 0.3), backend="cpu")
        return fastadv.linf_project(y * 1.01, x, 0.03, backend="cpu")

    compiled = torch.compile(attack_step, fullgraph=True)
    for shape in ((4, 3, 8, 8), (2, 3, 5, 5)):
        x = torch.rand(shape)
        x_adv, grad = x + 0.05 * torch.randn(shape), torch.randn(shape)
        assert_exact(compiled(x_adv, grad, x), attack_step(x_adv, grad, x), f"compiled {shape}")


def test_torch_compile_in_place():
    require_backend("cpu", "cpu")
    torch._dynamo.reset()

    def step_in_place(x_adv, grad, x):
        fastadv.linf_step(x_adv, grad, x, 0.03, 0.01, out=x_adv, backend="cpu")
        return x_adv

    x = torch.rand(2, 3, 4, 4)
    grad = torch.randn_like(x)
    a, b = x + 0.1, x + 0.1
    torch.compile(step_in_place, fullgraph=True)(a, grad, x)
    step_in_place(b, grad, x)
    assert_exact(a, b, "in place under torch.compile")


def test_available_backends_reports_every_backend():
    report = fastadv.available_backends()
    # the four built-in backends, and the emulated CUDA ones tests/conftest.py registers
    assert set(report) == {"torch", "triton", "cpu", "cuda", *cuda_emulation.NAMES}
    assert report["torch"] == "ok"
    for name, status in report.items():
        assert status == "ok" or (isinstance(status, str) and len(status) > 10), (name, status)
    if not torch.cuda.is_available():
        assert "GPU" in report["cuda"] or "not built" in report["cuda"] or "without CUDA" in report["cuda"]


def test_auto_choice_and_environment_override(monkeypatch):
    monkeypatch.delenv("FASTADV_BACKEND", raising=False)
    cpu = torch.device("cpu")
    expected = "cpu" if BACKENDS["cpu"].unavailable_reason(cpu) is None else "torch"
    assert BACKENDS[resolve_backend("auto", cpu)] is BACKENDS[expected]
    monkeypatch.setenv("FASTADV_BACKEND", "torch")
    assert BACKENDS[resolve_backend("auto", cpu)] is BACKENDS["torch"]
    assert BACKENDS[resolve_backend("cpu", cpu)] is BACKENDS["cpu"] or expected == "torch"  # explicit beats env


def test_the_build_has_what_ci_asked_for():
    """CI builds with FASTADV_BUILD_EXTENSION=1 FASTADV_BUILD_CUDA=1 and sets these, so a missing
    kernel (a silently skipped build) fails the run."""
    if os.environ.get("FASTADV_EXPECT_EXTENSION") == "1":
        assert BACKENDS["cpu"].unavailable_reason(torch.device("cpu")) is None, fastadv.available_backends()
    if os.environ.get("FASTADV_EXPECT_CUDA_KERNELS") == "1":
        assert torch._C._dispatch_has_kernel_for_dispatch_key("fastadv::linf_step_out", "CUDA")
    if not any(os.environ.get(v) == "1" for v in ("FASTADV_EXPECT_EXTENSION", "FASTADV_EXPECT_CUDA_KERNELS")):
        pytest.skip("no build expectation set (CI sets FASTADV_EXPECT_EXTENSION / FASTADV_EXPECT_CUDA_KERNELS)")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture_and_current_stream(backend):
    require_backend(backend, "cuda")
    x = torch.rand(8, 3, 32, 32, device="cuda")
    x_adv, grad = x + 0.05 * torch.randn_like(x), torch.randn_like(x)
    eps = torch.full((8,), 0.03, device="cuda")
    expected = fastadv.linf_step(x_adv, grad, x, eps, 0.01, backend="torch")
    out = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (autotuning) on a side stream, before capture
        fastadv.linf_step(x_adv, grad, x, eps, 0.01, out=out, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastadv.linf_step(x_adv, grad, x, eps, 0.01, out=out, backend=backend)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert_exact(out, expected, f"{backend} replayed from a CUDA graph")
    # L2 with the split reduction (3x224x224 samples), its scratch buffer allocated inside the graph
    big = torch.rand(2, 3, 224, 224, device="cuda")
    big_adv, big_grad, big_out = big + 0.01, torch.randn_like(big), torch.empty_like(big)
    expected = fastadv.l2_step(big_adv, big_grad, big, 2.0, 0.5, backend="torch")
    with torch.cuda.stream(stream):
        fastadv.l2_step(big_adv, big_grad, big, 2.0, 0.5, out=big_out, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastadv.l2_step(big_adv, big_grad, big, 2.0, 0.5, out=big_out, backend=backend)
    big_out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(big_out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_compile_reduce_overhead_on_gpu(backend):
    require_backend(backend, "cuda")
    torch._dynamo.reset()

    def f(x_adv, grad, x):
        return fastadv.linf_step(x_adv, grad, x, 0.03, 0.01, backend=backend)

    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    x = torch.rand(16, 3, 32, 32, device="cuda")
    x_adv, grad = x + 0.05 * torch.randn_like(x), torch.randn_like(x)
    for _ in range(3):
        got = compiled(x_adv, grad, x)
    assert_exact(got, f(x_adv, grad, x), f"{backend} under reduce-overhead")


@pytest.mark.parametrize(
    "bad",
    ["x_shape", "out_dtype", "grad_int", "table_dtype", "table_rows", "values"],
)
def test_fake_kernels_check_shapes_and_dtypes(bad):
    """The compiled ops' fake kernels are registered when fastadv loads (not on first use) and
    reject what the real kernels would, so that a wrong call fails while tracing too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    require_backend("cpu", "cpu")
    with FakeTensorMode():
        x_adv, grad, x, out = (torch.empty(2, 3, 4, 4) for _ in range(4))
        table, values = torch.empty(2, 1), [0.0, 0.1, 0.0, 1.0]
        torch.ops.fastadv.linf_step_out(x_adv, grad, x, table, None, None, None, values, False, out)  # accepted
        if bad == "x_shape":
            x = torch.empty(2, 3, 4, 5)
        elif bad == "out_dtype":
            out = torch.empty(2, 3, 4, 4, dtype=torch.float16)
        elif bad == "grad_int":
            grad = torch.empty(2, 3, 4, 4, dtype=torch.int32)
        elif bad == "table_dtype":
            table = torch.empty(2, 1, dtype=torch.float64)
        elif bad == "table_rows":
            table = torch.empty(3, 1)
        else:
            values = values[:3]
        for op in (torch.ops.fastadv.linf_step_out, torch.ops.fastadv.l2_step_out):
            with pytest.raises(RuntimeError, match="_step_out"):
                op(x_adv, grad, x, table, None, None, None, values, False, out)
