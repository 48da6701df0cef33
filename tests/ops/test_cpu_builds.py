"""The CPU loop's builds per x86-64 ISA level (baseline, avx2, avx512; csrc/cpu/step_cpu.h): every
build this CPU runs against the reference. L-inf bit for bit in every dtype pair, contiguous and
channels_last, every parameter kind, sizes that are no multiple of the vector width or of the
float16 chunk (csrc/cpu/step_cpu_loops.h), every 16-bit pattern through the conversions, subnormals
kept (no flush-to-zero, no denormals-are-zero); L2 to the contract's tolerance. Also the choice of
the build: FASTADV_CPU_ISA, use_cpu_isa and their errors."""

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from support.backends import DTYPES, require_backend
from support.compare import assert_close, assert_exact
from support.op_inputs import PARAM_KINDS, make_inputs, make_params
from support.toward_x import output_bits, toward_x_bits, toward_x_case

import fastadv
from fastadv.backends import cpu_backend

# Tails of every vector width (8, 16) and of the 1024-element float16 chunk, samples that span
# several chunks, a sample larger than the parallel grain (32768), C == 1 and a 2-D input.
SHAPES = [(1,), (37,), (3, 3, 17, 19), (2, 3, 40, 41), (2, 3, 100, 111), (2, 1, 9, 7), (3, 1029)]
LAYOUTS = ("contiguous", "channels_last")


def _cases():
    for shape in SHAPES:
        for layout in LAYOUTS if len(shape) == 4 else ("contiguous",):
            yield shape, layout


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grad_dtype", DTYPES, ids=str)
def test_linf_step_equals_reference(isa, dtype, grad_dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{isa}{dtype}{grad_dtype}".encode()))
    for shape, layout in _cases():
        for i, kind in enumerate(PARAM_KINDS):
            targeted = i % 2 == 1
            x_adv, grad, x = make_inputs(shape, dtype, grad_dtype, "cpu", layout, gen)
            p = make_params(kind, shape, "cpu", gen)
            args = (x_adv, grad, x, p["eps"], p["alpha"], p["lower"], p["upper"])
            expected = fastadv.linf_step(*args, targeted=targeted, backend="torch")
            actual = fastadv.linf_step(*args, targeted=targeted, backend="cpu")
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            assert actual.is_contiguous(memory_format=fmt), "runs natively: out keeps the layout"
            assert_exact(actual, expected, f"{isa} {shape} {layout} {kind} targeted={targeted}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linf_project_equals_reference_in_place(isa, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"project{isa}{dtype}".encode()))
    for shape, layout in _cases():
        for kind in PARAM_KINDS:
            x_adv, _, x = make_inputs(shape, dtype, dtype, "cpu", layout, gen)
            p = make_params(kind, shape, "cpu", gen, names=("eps", "lower", "upper"))
            expected = fastadv.linf_project(x_adv, x, p["eps"], p["lower"], p["upper"], backend="torch")
            fastadv.linf_project(x_adv, x, p["eps"], p["lower"], p["upper"], out=x_adv, backend="cpu")
            assert_exact(x_adv, expected, f"{isa} {shape} {layout} {kind} in place")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_every_16_bit_pattern_through_the_conversions(isa, dtype):
    """Loads: every pattern survives a projection with the widest ball and infinite bounds, bit for bit
    (subnormals and the sign of zero included), also from an odd offset and length. Stores: a
    million float32 values (each an alpha of its own) rounded as torch rounds."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    inf, widest = float("inf"), torch.finfo(torch.float32).max  # eps must be finite
    for every in (bits.view(dtype), bits[1:-2].view(dtype)):
        out = fastadv.linf_project(every, every, widest, -inf, inf, backend="cpu")
        assert_exact(out, fastadv.linf_project(every, every, widest, -inf, inf, backend="torch"), f"{isa} loads")
        finite = torch.isfinite(every)
        assert torch.equal(_bits(out)[finite], _bits(every)[finite]), f"{isa}: a finite pattern changed"

    gen = torch.Generator().manual_seed(11)
    exponent = torch.randint(-30, 20, (1021, 1027), generator=gen).float()
    alpha = torch.rand(1021, 1027, generator=gen) * torch.exp2(exponent)  # subnormal to overflow
    zeros = torch.zeros(1021, 1027, dtype=dtype)
    for targeted in (False, True):
        args = (zeros, torch.ones(1021, 1027, dtype=dtype), zeros, widest, alpha, -inf, inf)
        expected = fastadv.linf_step(*args, targeted=targeted, backend="torch")
        assert_exact(fastadv.linf_step(*args, targeted=targeted, backend="cpu"), expected, f"{isa} stores")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_rounding_rule_on_every_build(isa, dtype):
    """The rounding rule (DESIGN.md, "Rounding to the output dtype") runs on whole vectors in every
    build (csrc/cpu/step_simd.h) and in scalar form on the tails: results at the ball's edge that
    nearest rounding carries past it, results that round to zero on the far side of x (the step from
    a zero) and past the largest finite value, NaN: L-inf equal to the reference bit for bit, L2 to the
    contract's tolerance (its rounding bit for bit: test_l2_rounds_toward_x_on_every_build)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"rounding{isa}{dtype}".encode()))
    n = 4099  # every vector width and chunk many times over, and a tail
    info = torch.finfo(dtype)
    smallest = info.smallest_normal * info.eps  # the smallest subnormal
    x = (torch.rand(n, generator=gen) * torch.exp2(torch.randint(-12, 4, (n,), generator=gen).float())).to(dtype)
    x = torch.where(torch.rand(n, generator=gen) < 0.5, -x, x)
    x[::7] = smallest * torch.where(torch.rand(x[::7].shape, generator=gen) < 0.5, -1.0, 1.0)
    x[5::11] = info.max
    x[3::101] = float("nan")
    inf = float("inf")
    for eps in (0.1, 8 / 255, 0.0371, 1e-3, 0.6 * smallest, 1e30):
        for sign in (1.0, -1.0):  # x_adv beyond either edge of the ball (projected onto it), or at x
            x_adv = (x.float() + sign * 2 * eps * torch.rand(n, generator=gen)).to(dtype)
            x_adv[::13] = 0.0
            args = (x_adv, x, eps, -inf, inf)
            expected = fastadv.linf_project(*args, backend="torch")
            assert_exact(fastadv.linf_project(*args, backend="cpu"), expected, f"{isa} linf eps={eps}")
    for alpha in (0.1, 3.0, 1e-4):  # L2: every element rounded toward x
        x2, grad = x.view(1, n).nan_to_num(), torch.randn(1, n, generator=gen).to(dtype)
        args = (x2.roll(1, 1), grad, x2, 0.5, alpha, -inf, inf)
        expected = fastadv.l2_step(*args, backend="torch")
        assert_close(fastadv.l2_step(*args, backend="cpu"), expected, f"{isa} l2 alpha={alpha}")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_l2_rounds_toward_x_on_every_build(isa, dtype):
    """L2's rounding in each build's vector forms (float16 through directed conversions where the
    build has F16C, bfloat16 by truncation; csrc/cpu/step_cpu_loops.h's store_l2_output_lanes) and on
    the tails: bit for bit y rounded toward x (tests/support/toward_x.py's oracle), on small samples
    and on samples the size of ImageNet's (the write from the stored perturbation), on a sample too
    large for that scratch (the write from registers), and with an infinite gradient entry (the
    direction's limit: the write through float32 chunks), both layouts."""
    for shape in ((16, 12, 5, 7), (2, 3, 150, 151), (1, 3, 1183, 1183)):
        seed = zlib.crc32(f"toward{isa}{dtype}{shape}".encode())
        x_adv, x, eps, lower, upper, y = toward_x_case(dtype, seed, shape)
        expected = toward_x_bits(y, x)
        infinite = torch.zeros(shape, dtype=dtype)
        infinite[:, 0, 0, 3] = float("inf")
        for layout in LAYOUTS if shape[0] > 1 else ("contiguous",):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            a, xx = x_adv.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt)
            for grad in (torch.zeros_like(a), infinite.contiguous(memory_format=fmt)):
                out = fastadv.l2_step(a, grad, xx, eps, 0.5, lower, upper, backend="cpu")
                context = f"{isa} l2_step {shape} {layout} infinite={bool(grad.isinf().any())}"
                assert torch.equal(output_bits(out), expected), context
            out = fastadv.l2_project(a, xx, eps, lower, upper, backend="cpu")
            assert torch.equal(output_bits(out), expected), f"{isa} l2_project {shape} {layout}"


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32), ids=str)
def test_linf_step_vector_edges(isa, dtype):
    """The whole-vector L-inf loop's forms (step_math.h's signed_step_lanes, linf_project_lanes; the
    16-bit dtypes on every build, float32 on the avx512 build, gcc's loop elsewhere):
    gradients +-0, NaN, +-inf and tiny, a NaN in x (the clamps end at x + eps) or in x_adv, a zero
    step (alpha 0: the sign of the zero product), targeted or not, bounds at +-0 and inside the ball,
    every element in every lane position and in the tail, bit for bit against the reference."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"vector edges{isa}{dtype}".encode()))
    n = 1031
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-30, -1e-30, 1.0, -2.0])
    grad = specials[torch.randint(0, len(specials), (n,), generator=gen)].to(dtype)
    x = torch.rand(n, generator=gen) * 2 - 1
    x[::17] = float("nan")
    x[3::19] = torch.where(torch.rand(x[3::19].shape, generator=gen) < 0.5, 0.0, -0.0)
    x_adv = x + 0.2 * (torch.rand(n, generator=gen) - 0.5)
    x_adv[5::23] = float("nan")
    x_adv[7::29] = -0.0
    x, x_adv = x.to(dtype), x_adv.to(dtype)
    for alpha in (0.05, 0.0):
        for targeted in (False, True):
            for lower, upper in ((-float("inf"), float("inf")), (0.0, 1.0), (-1.0, -0.0), (-0.02, 0.03)):
                args = (x_adv, grad, x, 0.1, alpha, lower, upper)
                expected = fastadv.linf_step(*args, targeted=targeted, backend="torch")
                actual = fastadv.linf_step(*args, targeted=targeted, backend="cpu")
                assert_exact(actual, expected, f"{isa} alpha={alpha} targeted={targeted} [{lower}, {upper}]")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_linf_step_every_16_bit_x(isa, dtype):
    """Every 16-bit pattern as x (zeros, subnormals, the largest finite values, infinities, NaN), with
    x_adv inside, on and beyond the ball's edge on either side and gradients of every sign class, over a
    grid of eps, alpha, bounds and targeted: the vector loop (two vectors per iteration, the float16 pair
    narrowed in 16-bit lanes) and the rounding rule's vector form (step_math.h's budget_move_vector)
    equal the reference bit for bit."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"every x{isa}{dtype}".encode()))
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    n = every.numel()
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-30, -1e-30, 1.0, -2.0])
    inf = float("inf")
    cases = (  # alpha as a fraction of eps, bounds, targeted
        (0.25, -inf, inf, False),
        (1.0, 0.0, 1.0, True),
        (0.0, -0.0, 0.5, False),
        (0.25, -0.0, 0.5, True),
    )
    for eps in (8 / 255, 0.1, 1e-3, 3e-6, 300.0):
        x = every.repeat(4)
        scale = torch.tensor([0.5, 1.0, 1.5, 3.0]).repeat_interleave(n) * eps
        sign = torch.where(torch.rand(4 * n, generator=gen) < 0.5, -1.0, 1.0)
        x_adv = (x.float() + sign * scale).to(dtype)
        grad = torch.randn(4 * n, generator=gen)
        some = torch.rand(4 * n, generator=gen) < 0.1
        grad = torch.where(some, specials[torch.randint(0, len(specials), (4 * n,), generator=gen)], grad).to(dtype)
        for fraction, lower, upper, targeted in cases:
            alpha = fraction * eps
            args = (x_adv, grad, x, eps, alpha, lower, upper)
            expected = fastadv.linf_step(*args, targeted=targeted, backend="torch")
            actual = fastadv.linf_step(*args, targeted=targeted, backend="cpu")
            assert_exact(actual, expected, f"{isa} eps={eps} alpha={alpha} [{lower}, {upper}] {targeted}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_subnormals_are_not_flushed(isa, dtype):
    """No flush-to-zero (a subnormal result stays) and no denormals-are-zero (a subnormal input
    stays), in the output dtype and in the float32 arithmetic."""
    tiny = torch.finfo(dtype).smallest_normal
    subnormals = torch.tensor([tiny / 2, tiny / 4, -tiny / 8, tiny * 2**-6], dtype=dtype).repeat(9)  # 36: a tail
    assert bool((subnormals != 0).all()) and bool((subnormals.abs() < tiny).all())
    zeros, ones = torch.zeros_like(subnormals), torch.ones_like(subnormals)
    inf, widest = float("inf"), torch.finfo(torch.float32).max  # eps must be finite
    # a subnormal input moved by nothing
    out = fastadv.linf_step(subnormals, ones, subnormals, widest, 0.0, -inf, inf, backend="cpu")
    assert torch.equal(_bits(out), _bits(subnormals)), f"{isa}: a subnormal input was flushed"
    # a subnormal result from zero and a subnormal alpha (per element)
    alpha = subnormals.abs().float().view(4, 9)
    zeros, ones = zeros.view(4, 9), ones.view(4, 9)
    out = fastadv.linf_step(zeros, ones, zeros, widest, alpha, -inf, inf, backend="cpu")
    assert torch.equal(out.float(), alpha), f"{isa}: a subnormal result was flushed"
    # float32 subnormals inside the arithmetic of a float16 / bfloat16 step
    x = torch.full((37,), 2**-130, dtype=torch.float32)
    out = fastadv.linf_step(x, x, x, 2**-131, 2**-130, -inf, inf, backend="cpu")
    assert_exact(out, fastadv.linf_step(x, x, x, 2**-131, 2**-130, -inf, inf, backend="torch"), "float32 subnormals")
    assert bool((out == 2**-130 + 2**-131).all()), f"{isa}: float32 subnormal arithmetic was flushed"


def _bits(t):
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def _l2_params(kind, shape, gen):
    batch, channels = shape[0], shape[1]
    scale = 0.15 * torch.Size(shape[1:]).numel() ** 0.5
    if kind == "scalar":
        return {"eps": 0.6 * scale, "alpha": 0.3 * scale, "lower": -0.05, "upper": 1.05}
    return {
        "eps": scale * (0.2 + torch.rand(batch, generator=gen)),
        "alpha": scale * 0.5 * torch.rand(batch, generator=gen),
        "lower": -0.1 + 0.2 * torch.rand((1, channels, 1, 1), generator=gen),
        "upper": 0.8 + 0.3 * torch.rand((1, channels, 1, 1), generator=gen),
    }


# CIFAR-size samples (float16 is widened per sample in the baseline build), samples that span
# chunks, and one larger than the parallel grain.
L2_SHAPES = [(5, 3, 32, 32), (3, 3, 17, 19), (2, 3, 40, 41), (2, 3, 100, 111), (3, 1, 7, 5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grad_dtype", DTYPES, ids=str)
def test_l2_step_matches_reference(isa, dtype, grad_dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"l2{isa}{dtype}{grad_dtype}".encode()))
    for shape in L2_SHAPES:
        for layout in LAYOUTS:
            for kind, targeted in (("scalar", False), ("per_sample_eps_channel_bounds", True)):
                x_adv, grad, x = make_inputs(shape, dtype, grad_dtype, "cpu", layout, gen)
                grad = torch.where(torch.isinf(grad), torch.zeros_like(grad), grad)
                p = _l2_params(kind, shape, gen)
                args = (x_adv, grad, x, p["eps"], p["alpha"], p["lower"], p["upper"])
                expected = fastadv.l2_step(*args, targeted=targeted, backend="torch")
                actual = fastadv.l2_step(*args, targeted=targeted, backend="cpu")
                assert_close(actual, expected, f"{isa} {shape} {layout} {kind} targeted={targeted}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_project_matches_reference(isa, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"l2p{isa}{dtype}".encode()))
    for shape in L2_SHAPES:
        for layout in LAYOUTS:
            x_adv, _, x = make_inputs(shape, dtype, dtype, "cpu", layout, gen)
            p = _l2_params("per_sample_eps_channel_bounds", shape, gen)
            args = (x_adv, x, p["eps"], p["lower"], p["upper"])
            assert_close(fastadv.l2_project(*args, backend="cpu"), fastadv.l2_project(*args, backend="torch"), isa)


# ---- choosing the build ----


def test_cpu_isas_match_the_cpu_flags():
    require_backend("cpu", "cpu")
    isas = cpu_backend.cpu_isas()
    assert isas[0] == "baseline" and set(isas) <= set(cpu_backend.CPU_ISAS)
    assert cpu_backend.cpu_isa() == isas[-1] or os.environ.get("FASTADV_CPU_ISA")
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags")
    assert ("avx2" in isas) == ({"avx2", "fma", "f16c"} <= flags)
    assert ("avx512" in isas) == ({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags)


def test_use_cpu_isa_restores_and_rejects():
    require_backend("cpu", "cpu")
    before = cpu_backend.cpu_isa()
    with cpu_backend.use_cpu_isa("baseline"):
        assert cpu_backend.cpu_isa() == "baseline"
    assert cpu_backend.cpu_isa() == before
    with pytest.raises(ValueError, match="name must be one of baseline, avx2, avx512, got 'sse4'"):
        with cpu_backend.use_cpu_isa("sse4"):
            pass
    with pytest.raises(RuntimeError, match="set_cpu_isa: name must be one of"):
        torch.ops.fastadv.set_cpu_isa("sse4")
    assert cpu_backend.cpu_isa() == before


def _run_with_env(value: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTADV_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_environment_variable_chooses_the_build():
    require_backend("cpu", "cpu")
    code = (
        "import torch, fastadv\nfrom fastadv.backends import cpu_backend\nprint(cpu_backend.cpu_isa())\n"
        "x = torch.rand(10)\nfastadv.linf_step(x, x, x, 0.1, 0.1, backend='cpu')\n"
    )
    done = _run_with_env("baseline", code)
    assert done.returncode == 0 and done.stdout.split() == ["baseline"], done.stderr
    done = _run_with_env("avx1024", code)
    assert done.returncode != 0
    assert "FASTADV_CPU_ISA must be one of baseline, avx2, avx512 or auto, got 'avx1024'" in done.stderr
    missing = [name for name in cpu_backend.CPU_ISAS if name not in cpu_backend.cpu_isas()]
    if missing:  # a CPU without AVX-512 (or AVX2): asking for it names the variable
        done = _run_with_env(missing[-1], code)
        assert done.returncode != 0 and f"FASTADV_CPU_ISA='{missing[-1]}': this CPU cannot run" in done.stderr


def test_rounding_rule_at_sixteen_lanes(tmp_path):
    """The AVX-512 build runs the rule on 16-lane vectors, which this host may not run: the same
    generic expression and the vector forms the loops apply (which differ between 512-bit and narrower
    vectors), at 16 and at 8 lanes, compiled for what the host runs, equal the scalar form
    (tests/ops/cpu_lanes/rule_lanes.cpp)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None or sys.platform != "linux":
        pytest.skip("no g++ to build tests/ops/cpu_lanes/rule_lanes.cpp")
    root = Path(__file__).resolve().parents[2]
    isa = ["-mavx2", "-mfma"] if "avx2" in cpu_backend.cpu_isas() else []
    binary = tmp_path / "rule_lanes"
    source = root / "tests" / "ops" / "cpu_lanes" / "rule_lanes.cpp"
    flags = ["-std=c++20", "-O2", "-Wno-psabi", *isa, f"-I{root / 'csrc'}", "-o", str(binary), str(source)]
    subprocess.run([compiler, *flags], check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for lanes in (16, 8):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{lanes} lanes"))
        assert "generic 0, vector 0, upper halves 0 of 6400000 differ; l2 generic 0, l2 0 of " in line, line
