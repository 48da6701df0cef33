"""Attack loops written independently of fastadv's, the tests' reference for the gradient attacks:
PGD (L-inf or L2, optional momentum), the margin loss and the engine's L-inf random start."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
