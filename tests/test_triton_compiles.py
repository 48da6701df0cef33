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

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import itertools
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastadv.backends import triton as backend

    fn = backend._linf_kernel.fn
    names = fn.arg_names
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
        signature = {}
        for name in names:
            if name in ("x_adv_ptr", "x_ptr", "out_ptr"):
                signature[name] = "*" + xt
            elif name == "grad_ptr":
                signature[name] = "*" + gt
            elif name.endswith("_ptr"):
                signature[name] = "*fp32"
            elif name.endswith("_value"):
                signature[name] = "fp32"
            elif name.isupper():
                signature[name] = "constexpr"
            else:
                signature[name] = it
        constants = {"EPS_TABLE": tables, "ALPHA_TABLE": False, "LOWER_TABLE": tables, "UPPER_TABLE": False,
                     "HAS_GRAD": has_grad, "TARGETED": targeted, "BLOCK_SIZE": 1024}
        source = ASTSource(fn=fn, signature=signature,
                           constexprs={(names.index(k),): v for k, v in constants.items()})
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        assert len(kernel.asm["cubin"]) > 0
        print("compiled", xt, gt, it, tables, has_grad, targeted, "sm_%d" % arch)
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the compiled kernels run in the cuda tests")
def test_triton_kernel_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("compiled") == 12
