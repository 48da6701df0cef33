"""The Triton kernel through Triton's real compiler, for Hopper and Ampere, without a GPU.

The interpreter (used by the other tests on CPU) accepts code that the compiler rejects, so each
kernel variant is compiled ahead of time to a cubin here. With a GPU, the cuda-marked tests run
the compiled kernels instead, so this check is skipped there.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.triton]  # Triton compiles the kernels for two GPU architectures

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import itertools
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastadv.backends.triton_backend import l2, linf

    def signature(fn, xt, gt, it):
        types = {}
        for name in fn.arg_names:
            if name in ("x_adv_ptr", "x_ptr", "out_ptr"):
                types[name] = "*" + xt
            elif name == "grad_ptr":
                types[name] = "*" + gt
            elif name.endswith("_ptr"):
                types[name] = "*fp32"
            elif name.endswith("_value"):
                types[name] = "fp32"
            elif name.isupper():
                types[name] = "constexpr"
            else:
                types[name] = it
        return types

    def compile_for(fn, xt, gt, it, constants, arch):
        source = ASTSource(fn=fn, signature=signature(fn, xt, gt, it),
                           constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        assert len(kernel.asm["cubin"]) > 0
        print("compiled", fn.__name__, xt, gt, it, constants, "sm_%d" % arch)

    variants = [
        # (x dtype, grad dtype, index type, tables, has_grad, targeted)
        ("fp32", "fp32", "i32", False, True, False),
        ("fp32", "fp32", "i64", True, True, True),
        ("fp16", "fp32", "i32", True, True, False),
        ("bf16", "bf16", "i32", False, True, True),
        ("bf16", "fp32", "i64", True, False, False),
        ("fp16", "fp16", "i32", False, False, False),
    ]
    for (xt, gt, it, tables, has_grad, targeted), arch in itertools.product(variants, (80, 90)):
        flags = {"EPS_TABLE": tables, "ALPHA_TABLE": False, "LOWER_TABLE": tables, "UPPER_TABLE": False,
                 "HAS_GRAD": has_grad, "TARGETED": targeted}
        compile_for(linf._linf_kernel.fn, xt, gt, it, {**flags, "BLOCK_SIZE": 1024}, arch)
        compile_for(l2._l2_sample_kernel, xt, gt, it, {**flags, "BLOCK_SIZE": 4096}, arch)
        for stage in (0, 1, 2):
            compile_for(l2._l2_chunk_kernel, xt, gt, it,
                        {**flags, "STAGE": stage, "CHUNK": 4096, "CHUNKS_POW2": 64}, arch)
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels run in the cuda tests")
def test_triton_kernels_compile_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("compiled") == 12 * 5
