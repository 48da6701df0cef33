"""What the CUDA emulation cannot see, read from the compiler: the kernels of
csrc/cuda/step_kernels.cuh compiled for Hopper (sm_90) with nvcc, without torch's heavy headers
(a few seconds). Checks: no kernel spills registers or uses a stack frame, register counts stay
where the launch sizes assume them, and the vectorized L-inf kernels really move 16-byte packs
(ld.global.v4 / st.global.v4 in the PTX). Skipped where nvcc is missing."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

pytestmark = pytest.mark.slow  # nvcc compiles every kernel

REPO = Path(__file__).resolve().parents[2]

# (kernel instantiation, register limit). The L-inf kernels are memory-bound: above 64 registers a
# block of 256 threads would leave most of an SM's threads idle. The L2 one-block kernels hold 16
# elements of three tensors per thread (__launch_bounds__(256) allows up to 255).
KERNELS = {
    "linf_kernel<true, 4, float, float, int32_t>": 64,
    "linf_kernel<true, 4, float, float, int64_t>": 64,
    "linf_kernel<true, 8, c10::Half, float, int32_t>": 64,
    "linf_kernel<true, 8, c10::Half, c10::Half, int32_t>": 64,
    "linf_kernel<true, 8, c10::BFloat16, c10::BFloat16, int32_t>": 64,
    "linf_kernel<false, 4, float, float, int32_t>": 64,
    "linf_kernel<true, 1, c10::Half, c10::BFloat16, int32_t>": 64,
    "l2_sample_kernel<true, 4, float, float>": 128,
    "l2_sample_kernel<true, 16, float, float>": 128,
    "l2_sample_kernel<true, 16, c10::Half, c10::Half>": 128,
    "l2_chunk_kernel<0, true, float, float>": 64,
    "l2_chunk_kernel<1, true, c10::BFloat16, float>": 64,
    "l2_chunk_kernel<2, true, c10::Half, c10::Half>": 64,
}
VECTORIZED = [k for k in KERNELS if k.startswith("linf_kernel") and ", 1, " not in k]


def _nvcc() -> str | None:
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = Path(home) / "bin" / "nvcc"
    return str(path) if path.exists() else shutil.which("nvcc")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    folder = tmp_path_factory.mktemp("ptx")
    source = folder / "kernels.cu"
    lines = "\n".join(f"  (void)&{kernel};" for kernel in KERNELS)
    source.write_text(
        '#include <c10/util/BFloat16.h>\n#include <c10/util/Half.h>\n#include "step_kernels.cuh"\n'
        f"using namespace fastadv::cuda_kernels;\nvoid instantiate() {{\n{lines}\n}}\n"
    )
    flags = ["-std=c++17", "-arch=sm_90", "--expt-relaxed-constexpr", f"-I{REPO / 'csrc' / 'cuda'}"]
    flags += [f"-I{p}" for p in cpp_extension.include_paths()[:1]]
    ptx = folder / "kernels.ptx"
    subprocess.run([nvcc, *flags, "-ptx", "-o", str(ptx), str(source)], check=True, capture_output=True)
    info = subprocess.run(
        [nvcc, *flags, "-cubin", "-Xptxas", "-v", "-o", str(folder / "kernels.cubin"), str(source)],
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    return ptx.read_text(), _resources(info)


def _demangled(names: list[str]) -> list[str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _short(demangled: str) -> str:
    """void fastadv::cuda_kernels::linf_kernel<true, 4, float, float, int>(...) -> the KERNELS key."""
    name = demangled.split("(")[0].removeprefix("void ").replace("fastadv::cuda_kernels::", "")
    name = re.sub(r"\bint\b", "int32_t", name).replace("long", "int64_t")
    return re.sub(r"(\d)l\b", r"\1", name)


def _resources(info: str) -> dict[str, dict[str, int]]:
    """ptxas -v output -> {kernel: {registers, spill_stores, spill_loads, stack}}."""
    entries = re.findall(
        r"Function properties for (\S+)\n\s+(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
        r"loads\nptxas info\s+: Used (\d+) registers",
        info,
    )
    names = _demangled([e[0] for e in entries])
    return {
        _short(name): {"stack": int(e[1]), "spill_stores": int(e[2]), "spill_loads": int(e[3]), "registers": int(e[4])}
        for name, e in zip(names, entries, strict=True)
    }


def test_every_kernel_compiles_without_spills(compiled):
    _, resources = compiled
    assert set(resources) == set(KERNELS), sorted(resources)
    for kernel, limit in KERNELS.items():
        r = resources[kernel]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (kernel, r)
        assert r["registers"] <= limit, (kernel, r)


def test_vectorized_kernels_move_16_byte_packs(compiled):
    ptx, _ = compiled
    bodies = re.split(r"\.visible \.entry ", ptx)[1:]
    names = [_short(n) for n in _demangled([body.split("(")[0] for body in bodies])]
    for kernel in VECTORIZED:
        body = bodies[names.index(kernel)]
        assert re.search(r"ld\.global(\.nc)?\.v4\.", body), f"{kernel}: no 16-byte load"
        assert re.search(r"st\.global\.v4\.", body), f"{kernel}: no 16-byte store"
