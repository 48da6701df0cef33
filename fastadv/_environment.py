"""Facts about where fastadv runs, for reports and benchmark rows: the device's name, the
versions of what fastadv runs on, and the git commit of the code."""

from __future__ import annotations

import os
import platform
import subprocess

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model with its core and thread counts."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def git_sha() -> str:
    """The checked-out commit (12 digits, "-dirty" when code differs from it), or "unknown"."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        # Results being written are not a change to the code measured.
        code_only = ["--", ":(top)", ":(exclude,top)benchmarks/results"]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", *code_only],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """fastadv, torch, triton, CUDA and Python versions."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    from ._version import __version__

    return {
        "fastadv": __version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
    }
