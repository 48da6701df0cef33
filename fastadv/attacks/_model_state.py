"""Puts a model in attack mode and gives it back exactly as it was, also when the attack raises.

Attack mode: eval (or train, when asked) and no parameter requiring grad, so that
`torch.autograd.grad` with respect to the input computes no weight gradient and touches no
`.grad` field. Every module's own `training` flag (models may mix modes), every parameter's
`requires_grad` and every buffer (BatchNorm statistics move in train mode; custom modules may
write buffers in eval mode too) are restored on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

MODEL_MODES = ("eval", "train", "unchanged")


@contextmanager
def attack_mode(model: object, mode: str) -> Iterator[None]:
    """Within the block, `model` (any callable; only nn.Modules have state to manage) runs in
    `mode` ("eval", "train" or "unchanged") with every parameter's requires_grad off."""
    if not isinstance(model, nn.Module):
        yield
        return
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
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        yield
    finally:
        for m, flag in zip(modules, training, strict=True):
            m.training = flag
        for p, flag in zip(params, requires_grad, strict=True):
            p.requires_grad_(flag)
        for m, name, b, _ in buffers:
            if m._buffers.get(name) is not b:
                m._buffers[name] = b
        _restore_values([(b, snapshot) for _, _, b, snapshot in buffers])


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
