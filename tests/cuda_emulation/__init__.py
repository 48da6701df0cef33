"""The CUDA kernels of csrc/cuda/, compiled for the host and run on CPU tensors (see build.py,
runtime.h and backend.py)."""
