"""The model-mode context, public: `attack_mode(model, mode)` puts a model in attack mode and gives
it back exactly as it was, also when the block raises (`from fastadv.attacks import attack_mode`).
Every attack runs its model inside it (`Attack.model_mode`); the evaluation, the training recipes
and the demo use it for their own forward passes (clean predictions, a teacher's outputs), so
that they leave the model as they found it too.

Attack mode: eval (or train, when asked) and no parameter requiring grad, so that
`torch.autograd.grad` with respect to the input computes no weight gradient and touches no
`.grad` field. Every module's own `training` flag (models may mix modes), every parameter's
`requires_grad` and every buffer (BatchNorm statistics move in train mode; custom modules may
write buffers in eval mode too) are restored on exit.

Models of every kind the package loads: plain nn.Modules, TorchScript modules (scripted or
traced: their `_buffers` is a view of the C++ module's attributes, with `in` and `[]` but no
`get`), and torch.export programs (`ExportedProgram.module()`, whose train()/eval() raise:
its graph runs in the mode it was exported in; an `ExportedProgram` itself is not callable,
see `callable_model`).

With ``channels_last=True`` the model's 2-d convolution weights are also held in the
channels_last layout inside the block (see `conv_weights`), the layout in which oneDNN's CPU
convolutions run without reordering weights and activations at every call (measured 2.7x the
forward and 1.8x the forward + backward of the digits CNN on a batch of 45); the original
tensors are put back on exit, values and strides as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

MODEL_MODES = ("eval", "train", "unchanged")


def callable_model(model: object) -> object:
    """`model`, or the module of a torch.export program (an ExportedProgram refuses to be
    called: "use exported_program.module()"), so that every entry point takes both."""
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    return model


@contextmanager
def attack_mode(model: object, mode: str, channels_last: bool = False) -> Iterator[None]:
    """Within the block, `model` (any callable; only nn.Modules have state to manage) runs in
    `mode` ("eval", "train" or "unchanged") with every parameter's requires_grad off and, with
    `channels_last`, its convolution weights in the channels_last layout. A torch.export
    program's module keeps the mode it was exported in (it cannot switch); asking it for
    "train" raises ValueError."""
    if not isinstance(model, nn.Module):
        yield
        return
    with _conv_weights_channels_last(model if channels_last else None):
        with _mode_and_grads(model, mode):
            yield


@contextmanager
def _mode_and_grads(model: nn.Module, mode: str) -> Iterator[None]:
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    # (owner, name, tensor, snapshot). BatchNorm updates its statistics without bumping the
    # version counter, so values are compared; only changed buffers are written back, so that a
    # graph the caller saved them in stays valid.
    buffers = [(m, name, b, b.detach().clone()) for m in modules for name, b in m._buffers.items() if b is not None]
    try:
        for p in params:
            p.requires_grad_(False)
        if mode != "unchanged":
            _set_mode(model, mode == "train")
        yield
    finally:
        for m, flag in zip(modules, training, strict=True):
            if m.training != flag:  # (a TorchScript module's flag is an attribute of its C++ module)
                m.training = flag
        for p, flag in zip(params, requires_grad, strict=True):
            p.requires_grad_(flag)
        for m, name, b, _ in buffers:
            if _buffer(m, name) is not b:
                m._buffers[name] = b
        _restore_values([(b, snapshot) for _, _, b, snapshot in buffers])


def _set_mode(model: nn.Module, train: bool) -> None:
    try:
        model.train() if train else model.eval()
    except NotImplementedError:  # torch.export's program.module(): "Calling eval() is not supported yet."
        if train:
            raise ValueError(
                "model_mode='train': the model is a torch.export program, whose graph runs in the mode "
                "it was exported in; export it in train mode and use model_mode='unchanged'"
            ) from None
        # eval: fastadv's loader refuses programs exported in train mode; others run as exported


def _buffer(m: nn.Module, name: str) -> torch.Tensor | None:
    buffers = m._buffers  # a dict, or a ScriptModule's wrapper (no .get)
    return buffers[name] if name in buffers else None


def _restore_values(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copies each snapshot back into its tensor where the values differ (one host sync)."""
    if not pairs:
        return
    with torch.no_grad():
        flags = [_differs(t, s) for t, s in pairs]
        changed = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
        for (t, s), moved in zip(pairs, changed, strict=True):
            if moved:
                t.copy_(s)


def _differs(t: torch.Tensor, snapshot: torch.Tensor) -> torch.Tensor:
    unequal = t != snapshot
    if t.is_floating_point() or t.is_complex():
        unequal &= ~(t.isnan() & snapshot.isnan())
    return unequal.any()


def conv_weights(model: object) -> list[torch.Tensor]:
    """The 4-d floating weights of `model`'s 2-d convolutions, each once: those of modules that
    are exactly nn.Conv2d, scripted or traced ones (their `original_name`), and in a
    torch.fx graph (torch.export's module) the weights its conv2d/convolution nodes read.
    Subclasses are left out: their forward may `.view` the weight, which a channels_last
    tensor refuses."""
    if not isinstance(model, nn.Module):
        return []
    found: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if type(module) is nn.Conv2d or getattr(module, "original_name", None) == "Conv2d":
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                found.setdefault(id(weight), weight)
        graph = getattr(module, "graph", None)
        if isinstance(module, torch.fx.GraphModule) and isinstance(graph, torch.fx.Graph):
            for node in graph.nodes:
                if node.op == "call_function" and node.target in _CONVOLUTIONS and len(node.args) > 1:
                    source = node.args[1]
                    if isinstance(source, torch.fx.Node) and source.op == "get_attr":
                        weight = _attribute(module, source.target)
                        if isinstance(weight, torch.Tensor):
                            found.setdefault(id(weight), weight)
    return [w for w in found.values() if w.dim() == 4 and w.is_floating_point()]


_CONVOLUTIONS = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default, torch.nn.functional.conv2d)


def _attribute(module: nn.Module, dotted: str) -> object:
    for name in dotted.split("."):
        module = getattr(module, name, None)
    return module


@contextmanager
def _conv_weights_channels_last(model: nn.Module | None) -> Iterator[None]:
    """`model`'s convolution weights in channels_last within the block (None: nothing to do).
    Each weight keeps its identity (the same Parameter object, which scripted modules share
    with their C++ module); only its data is swapped, and swapped back on exit."""
    if model is None:
        yield
        return
    saved, swapped = [], []
    for w in conv_weights(model):
        # strides compared, not is_contiguous: a weight with one input channel is contiguous in
        # both layouts, and the convolution picks its layout from the strides
        data = torch.empty_like(w, memory_format=torch.channels_last)
        if data.stride() != w.stride():
            saved.append((w, w.data))
            swapped.append(data)
    try:
        for (w, original), data in zip(saved, swapped, strict=True):
            w.data = data.copy_(original)
        yield
    finally:
        for w, data in saved:
            w.data = data
