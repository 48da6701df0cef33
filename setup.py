"""Build script: the C++ extension fastadv._C (CPU always, CUDA when it can be built).

Environment variables (each "auto" when unset):
  FASTADV_BUILD_EXTENSION  1: build it and fail on any error; 0: skip it (pure Python install);
                           auto: build it, and install without it if the build fails.
  FASTADV_BUILD_CUDA       1: build the CUDA kernels (fail if nvcc or a CUDA build of torch is
                           missing); 0: CPU only; auto: CUDA when both are present.
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0+PTX": A100, H100/H200, and PTX
                           that newer GPUs compile at load time).
Without the extension, fastadv still works through its torch and triton backends.
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _mode(name: str) -> str:
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        sys.exit(f"{name} must be auto, 0 or 1, got {value!r}")
    return value


def _extension_setup():
    """Returns (ext_modules, cmdclass); empty when the extension is not to be built."""
    build_mode = _mode("FASTADV_BUILD_EXTENSION")
    if build_mode == "0":
        return [], {}
    # torch guesses CUDA_HOME from `which nvcc`; a bare nvcc link in /usr/local/bin then gives
    # /usr/local, which has no CUDA libraries. Prefer the standard toolkit folder when it exists.
    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if build_mode == "1":
            sys.exit(
                "FASTADV_BUILD_EXTENSION=1 but torch is not importable: install torch first "
                "and build with pip install --no-build-isolation"
            )
        print("fastadv: torch is not importable at build time; installing without the C++ extension", file=sys.stderr)
        return [], {}

    cuda_mode = _mode("FASTADV_BUILD_CUDA")
    cuda_home = cpp_extension.CUDA_HOME
    nvcc_found = bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))
    cuda_possible = torch.version.cuda is not None and nvcc_found
    if cuda_mode == "1" and not cuda_possible:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "nvcc was not found (set CUDA_HOME)"
        sys.exit(f"FASTADV_BUILD_CUDA=1 but {why}")
    use_cuda = cuda_possible if cuda_mode == "auto" else cuda_mode == "1"

    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard is the one torch asks for
    extra = {"extra_compile_args": {"cxx": cxx_flags}, "extra_link_args": ["-fopenmp"]}
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        extra["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension("fastadv._C", sources + rel("csrc/cuda/*.cu"), **extra)
    else:
        ext = cpp_extension.CppExtension("fastadv._C", sources, **extra)

    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class BuildExtension(base):
        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as error:  # noqa: BLE001 - any build failure falls back in auto mode
                if build_mode == "1":
                    raise
                # Forget the extension, so the install does not look for its library.
                self.extensions = []
                print(
                    f"fastadv: building the C++ extension failed ({error}); installing without it. "
                    "The torch and triton backends remain available.",
                    file=sys.stderr,
                )

    print(f"fastadv: building fastadv._C with {'CPU and CUDA' if use_cuda else 'CPU'} kernels", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extension_setup()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
