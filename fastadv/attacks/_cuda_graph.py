"""The CUDA-graph path of the gradient attacks: one attack step (forward, input-gradient backward,
fused step) captured once per input shape and replayed for every step.

A step launches dozens of small kernels whose launch cost, not their work, bounds PGD on small
images and fast GPUs; a replayed graph launches them all at once. Graphs need static shapes and
addresses, so the step reads and writes fixed buffers: each call copies the images, labels,
random start and per-sample parameters into them, replays `steps` times and copies the result
out. Early stopping (whose batch shrinks) and restarts stay on the uncaptured path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

# Warm-up runs before capture: the first allocates, compiles Triton kernels and initialises cuDNN
# and autograd state that must not be created during capture.
_WARMUP = 2


def cuda_capture(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Runs `step` on a side stream to warm up, captures one run into a CUDA graph and returns
    the graph's replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(_WARMUP):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def graph_key(x: torch.Tensor, y: torch.Tensor, params) -> tuple:
    """What a captured graph is specific to: shapes, dtypes, strides and device of the inputs and
    of the tensor parameters (a parameter given as a number is baked into the graph)."""
    tensors = tuple((tuple(p.shape), p.dtype) if isinstance(p, torch.Tensor) else ("number", float(p)) for p in params)
    return (tuple(x.shape), x.dtype, x.stride(), str(x.device), y.dtype, tensors)


class GraphedSteps:
    """One attack step on static buffers, captured with `capture(step, device)` (a CUDA graph;
    tests pass a capture that simply calls the step, to check the buffer handling on the CPU).

    step(x_adv, y, x, call): a stateless step (no momentum) that moves x_adv in place and returns
    the model's number of classes (`GradientAttack._graph_step`).
    """

    def __init__(self, step: Callable[..., int], x: torch.Tensor, y: torch.Tensor, call, capture=cuda_capture):
        self.step = step
        self.x = x.clone()
        self.y = y.clone()
        self.x_adv = x.clone()
        self.params = type(call.params)(*(p.clone() if isinstance(p, torch.Tensor) else p for p in call.params))
        # the captured forward must not cache autocast's casts of the weights (they would be
        # freed memory at the next replay), and the label range is checked before each replay
        self.call = dataclasses.replace(call, params=self.params, generator=None, capturing=True)
        self.classes = None
        self.replay = capture(self._step, x.device)

    def _step(self) -> None:
        self.classes = self.step(self.x_adv, self.y, self.x, self.call)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, call, steps: int) -> torch.Tensor:
        low, high = call.label_range
        if low < 0 or high >= self.classes:
            raise ValueError(
                f"labels must lie in [0, {self.classes}) for a model with {self.classes} outputs; found {low}..{high}"
            )
        self.x.copy_(x)
        self.y.copy_(y)
        self.x_adv.copy_(start)
        for static, given in zip(self.params, call.params, strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(given)
        for _ in range(steps):
            self.replay()
        return self.x_adv.clone()
