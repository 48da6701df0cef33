"""Builds the CUDA emulation: fastadv's CUDA launchers and kernels (csrc/cuda/), compiled for
the host from the same source files and run on CPU tensors by the fiber runtime in runtime.cpp.

Each build copies csrc/ into the build folder, rewriting only the files of csrc/cuda/ (with
#line directives, so compiler messages and the runtime's checks name the original lines):

- ``kernel<<<grid, block, smem, stream>>>(args)`` becomes
  ``::fastadv_emu::Launch("kernel", __FILE__, __LINE__, grid, block, smem, stream).run([=] { kernel(args); })``;
- ``TORCH_LIBRARY_IMPL(fastadv, CUDA, m)`` registers the same functions for CPU tensors in the
  namespace ``fastadv_cuda_emulated``, and ``c10::kCUDA`` (the device the checks expect) becomes
  ``c10::kCPU``;
- ``reinterpret_cast<`` checks the alignment of pointer targets, ``at::empty(`` fills its memory
  with NaN bytes and ``__shared__`` arrays are fresh NaN-filled memory in every block.

Nothing else changes, so a change to a kernel is tested by the next test run. The sources can
come from another folder (FASTADV_CUDA_EMULATION_SOURCE, used by the mutation script).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NAMESPACE = "fastadv_cuda_emulated"
CONTROL_NAMESPACE = "fastadv_cuda_emulation"

_LAUNCH = re.compile(r"(?P<kernel>[A-Za-z_]\w*(?:\s*<(?:[^<>;{}]|<[^<>;{}]*>)*>)?)\s*<<<(?P<config>.*?)>>>\s*\(", re.S)
_SHARED = re.compile(r"__shared__\s+(?P<type>[\w:]+)\s+(?P<name>\w+)\s*\[(?P<size>[^\]]+)\]\s*;")


class EmulationBuildError(RuntimeError):
    pass


def _matching_paren(text: str, open_index: int) -> int:
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise EmulationBuildError("unbalanced parentheses after a kernel launch")


def _rewrite_launches(text: str, path: str) -> str:
    out, pos = [], 0
    for match in _LAUNCH.finditer(text):
        if match.start() < pos:
            continue
        close = _matching_paren(text, match.end() - 1)
        kernel, config = match.group("kernel"), match.group("config")
        args = text[match.end() : close]
        label = " ".join(kernel.split())
        # Only the newlines of the original text are kept, so every line keeps its number.
        out.append(text[pos : match.start()])
        out.append(f'::fastadv_emu::Launch("{label}", __FILE__, __LINE__, {config}).run([=] {{ {kernel}({args}); }})')
        pos = close + 1
    out.append(text[pos:])
    result = "".join(out)
    if "<<<" in result:
        line = result[: result.index("<<<")].count("\n") + 1
        raise EmulationBuildError(f"{path}:{line}: a kernel launch the emulation cannot rewrite")
    return result


def _rewrite_shared(match: re.Match) -> str:
    return (
        f"auto& {match.group('name')} = ::fastadv_emu::shared_array<{match.group('type')}, "
        f"({match.group('size')}), __COUNTER__>();"
    )


def rewrite(text: str, path: str, *, registers_ops: bool = True) -> str:
    """The host version of one csrc/cuda/ file (see the module docstring)."""
    if "extern __shared__" in text:
        raise EmulationBuildError(f"{path}: dynamic shared memory is not emulated")
    text = _rewrite_launches(text, path)
    text = _SHARED.sub(_rewrite_shared, text)
    text, registrations = re.subn(
        r"TORCH_LIBRARY_IMPL\(\s*fastadv\s*,\s*CUDA\s*,", f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU,", text
    )
    if registers_ops and path.endswith(".cu") and registrations == 0:
        raise EmulationBuildError(f"{path}: no TORCH_LIBRARY_IMPL(fastadv, CUDA, m) block to emulate")
    text = text.replace("c10::kCUDA", "c10::kCPU")
    text = re.sub(r"\breinterpret_cast<", "::fastadv_emu::checked_reinterpret_cast<", text)
    text = re.sub(r"\bat::empty\(", "::fastadv_emu::poisoned_empty(", text)
    return f'#include "runtime.h"\n#line 1 "{path}"\n' + text


def source_root() -> Path:
    return Path(os.environ.get("FASTADV_CUDA_EMULATION_SOURCE", REPO / "csrc")).resolve()


def build_root() -> Path:
    # One folder per Python and torch version: the main environment and .ci/gpu-stack's share the
    # checkout, and a module built against one torch cannot load into the other.
    import torch

    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    default = REPO / "build" / "cuda_emulation" / f"{python}-torch{torch.__version__.split('+')[0]}"
    return Path(os.environ.get("FASTADV_CUDA_EMULATION_BUILD", default)).resolve()


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their modification time, so ninja does not recompile them.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _mirror(src: Path, dst: Path) -> list[Path]:
    """Copies csrc/ into dst, rewriting cuda/; returns the translation units to compile."""
    written = set()
    units = []
    for file in sorted(src.rglob("*")):
        if file.is_dir() or file.suffix not in (".h", ".cuh", ".cpp", ".cu"):
            continue
        rel = file.relative_to(src)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        text = file.read_text()
        if rel.parts[0] == "cuda":
            text = rewrite(text, str(file))
            if file.suffix == ".cu":
                target = target.with_suffix(".cpp")
                units.append(target)
        else:
            text = f'#line 1 "{file}"\n' + text
            if rel.parts[0] != "cpu" and file.suffix == ".cpp" and file.name != "register.cpp":
                units.append(target)  # the shared argument checks
        _write_if_changed(target, text)
        written.add(target)
    registration = dst / "emulated_schemas.cpp"
    _write_if_changed(
        registration, f'#include "schemas.h"\n\nTORCH_LIBRARY({NAMESPACE}, m) {{\n  fastadv::define_step_ops(m);\n}}\n'
    )
    written.add(registration)
    units.append(registration)
    for stale in [p for p in dst.rglob("*") if p.is_file() and p not in written]:
        stale.unlink()  # a file removed from csrc/ must not be found by an #include
    if not any(u.parent.name == "cuda" for u in units):
        raise EmulationBuildError(f"no .cu file under {src / 'cuda'}")
    return units


@functools.cache
def load() -> None:
    """Builds (or reuses) and loads the emulation: torch.ops.fastadv_cuda_emulated.* and the
    control ops torch.ops.fastadv_cuda_emulation.*. Raises EmulationBuildError on failure."""
    import torch
    from torch.utils import cpp_extension

    root = build_root()
    src = root / "src"
    units = _mirror(source_root(), src)
    selftest = root / "selftest.cpp"  # kernels with deliberate bugs (test_emulation.py)
    _write_if_changed(
        selftest, rewrite((HERE / "selftest.cu").read_text(), str(HERE / "selftest.cu"), registers_ops=False)
    )
    units.append(selftest)
    objects = root / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name="fastadv_cuda_emulation",
            sources=[str(HERE / "runtime.cpp")] + [str(u) for u in units],
            extra_include_paths=[str(HERE / "include"), str(HERE)],
            # No contraction into fused multiply-adds: the kernels' float32 order is the contract's.
            extra_cflags=["-O2", "-ffp-contract=off", "-U_FORTIFY_SOURCE", "-Wno-unknown-pragmas"],
            build_directory=str(objects),
            is_python_module=False,
            verbose=os.environ.get("FASTADV_CUDA_EMULATION_VERBOSE") == "1",
        )
    except Exception as error:  # noqa: BLE001 - any build failure is reported as one
        raise EmulationBuildError(f"building the CUDA emulation failed: {error}") from error
    if not hasattr(torch.ops, NAMESPACE) or not hasattr(getattr(torch.ops, NAMESPACE), "linf_step_out"):
        raise EmulationBuildError("the CUDA emulation library loaded without its ops")
