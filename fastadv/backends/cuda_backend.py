"""The `cuda` backend: the C++ extension's CUDA kernels (csrc/cuda/), on the current stream."""

from __future__ import annotations

from .extension import ExtensionBackend

cuda = ExtensionBackend("cuda", "cuda")
