"""Helpers for the attack tests: a digits CNN trained once per session, a plain PyTorch PGD loop
written independently of the engine, a forward counter and a model-state snapshot."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from fastadv.datasets import digits
from fastadv.models import small_cnn, standard_digits_model


@functools.lru_cache(maxsize=1)
def _trained_digits_state() -> tuple[dict, torch.Tensor, torch.Tensor]:
    model = standard_digits_model()
    images, labels = digits("test")
    return {k: v.clone() for k, v in model.state_dict().items()}, images, labels


def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh copy of the seeded digits CNN (eval mode) and the test split."""
    state, images, labels = _trained_digits_state()
    model = small_cnn()
    model.load_state_dict(state)
    return model.eval(), images.clone(), labels.clone()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def plain_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true = logits[torch.arange(len(labels)), labels]
    others = logits.clone()
    others[torch.arange(len(labels)), labels] = -float("inf")
    return others.max(dim=1).values - true


def plain_attack(
    model, x, y, start, *, eps, alpha, steps, norm="linf", targeted=False, loss="ce", decay=None, keep=True
):
    """Straightforward PGD (L-inf or L2, optional MI-FGSM momentum) from `start`, summed loss.
    Returns the final iterate; with `keep` (the contract of Attack.run), a sample whose final
    iterate does not fool the model but an earlier one did gets the latest such iterate."""

    def loss_of(logits):
        per_sample = F.cross_entropy(logits, y, reduction="none") if loss == "ce" else plain_margin(logits, y)
        return per_sample

    def fooled(logits):
        return (logits.argmax(1) == y) if targeted else (logits.argmax(1) != y)

    kept = start.clone()
    ever = torch.zeros(len(y), dtype=torch.bool)
    momentum = torch.zeros_like(x)
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        logits = model(adv)
        grad = torch.autograd.grad(loss_of(logits).sum(), adv)[0]
        adv = adv.detach()
        hit = fooled(logits.detach())
        kept[hit] = adv[hit]
        ever |= hit
        if targeted:
            grad = -grad
        if decay is not None:
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
            momentum = decay * momentum + grad
            grad = momentum
        if norm == "linf":
            adv = adv + alpha * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps)
        else:
            g_norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            adv = adv + alpha * grad / g_norm
            delta = adv - x
            d_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = torch.where(d_norm > eps, delta * (eps / d_norm), delta)
            adv = x + delta
        adv = adv.clamp(0, 1)
    if not keep:
        return adv
    with torch.no_grad():
        hit = fooled(model(adv))
    kept[hit] = adv[hit]
    ever |= hit
    return torch.where(ever.view(-1, 1, 1, 1), kept, adv)


def uniform_start(x, eps, seed):
    """The engine's L-inf random start for torch.Generator().manual_seed(seed)."""
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * eps
    return torch.min(torch.max(x + noise, x - eps), x + eps).clamp(0, 1)


class CountingModel(nn.Module):
    """Wraps a model; counts forward calls and the samples they saw."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.samples = 0

    def forward(self, x):
        self.calls += 1
        self.samples += x.shape[0]
        return self.inner(x)


def snapshot(model: nn.Module) -> dict:
    """Everything an attack must leave as it was."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "buffer_ids": {k: id(v) for k, v in model.named_buffers()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"], "module training flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    for a, b in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b), "a parameter changed"
    for (grad_after, _), (grad_before, value_before) in zip(after["grads"], before["grads"], strict=True):
        assert grad_after is grad_before, ".grad was replaced"
        if value_before is not None:
            assert torch.equal(grad_after, value_before), ".grad values changed"
    assert after["buffer_ids"] == before["buffer_ids"], "a buffer was replaced"
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), f"buffer {name} changed"
