"""What an attack must leave as it was: a snapshot of a model's training flags, requires_grad,
parameters (values and strides), gradients and buffers, and the check that they are unchanged."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict:
    """Everything an attack must leave as it was."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "strides": [p.stride() for p in model.parameters()],
        "grads": [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "buffer_ids": {k: id(v) for k, v in model.named_buffers()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"], "module training flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    assert after["strides"] == before["strides"], "a parameter's layout (strides) changed"
    for a, b in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b), "a parameter changed"
    for (grad_after, _), (grad_before, value_before) in zip(after["grads"], before["grads"], strict=True):
        assert grad_after is grad_before, ".grad was replaced"
        if value_before is not None:
            assert torch.equal(grad_after, value_before), ".grad values changed"
    assert after["buffer_ids"] == before["buffer_ids"], "a buffer was replaced"
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), f"buffer {name} changed"
