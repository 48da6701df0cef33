"""Adversarial-training recipes, usable inside any training loop.

- "standard": no attack.
- "pgd": PGD-AT, Madry et al. 2018 (https://arxiv.org/abs/1706.06083): train on PGD examples
  with a random start (alpha defaults to eps / 4).
- "fgsm-rs": FGSM with a random start, Wong, Rice and Kolter 2020 ("Fast is better than free",
  https://arxiv.org/abs/2001.03994): alpha defaults to 1.25 eps.
- "free": Free-AT, Shafahi et al. 2019 (https://arxiv.org/abs/1904.12843): each batch is
  replayed `replays` times; every replay's one backward pass updates the weights and the
  perturbation, which is carried over to the next replay and batch (alpha defaults to eps).
  It needs the loop's optimizer, so it runs in :func:`fastadv.train.fit` (or :func:`free_replays`).
- "trades": TRADES, Zhang et al. 2019 (https://arxiv.org/abs/1901.08573): the attack maximises
  KL(f(x_adv) || f(x)); the loss is CE(f(x), y) + beta * KL.
- "distill": defensive distillation, Papernot et al. 2016 (https://arxiv.org/abs/1511.04508): no
  attack; the logits are divided by `temperature` in training (the model is deployed at T = 1),
  and the targets are the `teacher`'s softmax at that temperature, or the hard labels when there
  is no teacher (the first network of the procedure). See fastadv.defenses.distill.

`clean_fraction` keeps that share of each batch clean (the first samples of the batch, which a
shuffled loader makes a random share); the rest is adversarial.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from . import checks as check
from . import ops
from .attacks import FGSM, PGD
from .attacks.model_mode import attack_mode
from .checkpoint import fingerprint
from .defenses.distill import distillation_loss, soft_labels

RECIPES = ("standard", "pgd", "fgsm-rs", "free", "trades", "distill")


@dataclass(frozen=True)
class Recipe:
    """What adversarial training does to each batch; see the module docstring."""

    name: str = "pgd"
    eps: float = 8 / 255
    alpha: float | None = None
    steps: int = 10
    replays: int = 4
    beta: float = 6.0
    clean_fraction: float = 0.0
    temperature: float = 100.0
    teacher: nn.Module | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        check.choice("recipe", self.name, RECIPES)
        check.number("eps", self.eps, at_least=0)
        check.number("beta", self.beta, at_least=0)
        check.optional_number("alpha", self.alpha, at_least=0)
        check.positive_int("steps", self.steps)
        check.positive_int("replays", self.replays)
        check.probability("clean_fraction", self.clean_fraction)
        check.number("temperature", self.temperature, above=0)
        if self.teacher is not None and not isinstance(self.teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(self.teacher).__name__}")
        if self.teacher is not None and self.name != "distill":
            raise ValueError(f"teacher: only the distill recipe takes a teacher, not {self.name!r}")

    @property
    def step_size(self) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        return {"pgd": self.eps / 4, "fgsm-rs": 1.25 * self.eps, "trades": self.eps / 4}.get(self.name, self.eps)

    def as_dict(self) -> dict:
        """The settings as plain values (checkpoints and model files keep them): the teacher as
        a fingerprint of its weights (None without one)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "teacher"}
        values["teacher"] = None if self.teacher is None else fingerprint(self.teacher.state_dict().items())
        return values


def adversarial_batch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    *,
    generator: torch.Generator | None = None,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The batch to train on for `recipe` ("standard", "pgd", "fgsm-rs", "trades"): images whose
    last ``(1 - clean_fraction)`` share is replaced by adversarial examples. The model's state is
    left as it was (attacks run in eval mode). "free" raises: it needs the optimizer (use fit)."""
    if recipe.name == "free":
        raise ValueError("recipe 'free' updates the weights inside its replays: use fastadv.train.fit or free_replays")
    if recipe.name in ("standard", "distill"):
        return images
    n_clean = round(recipe.clean_fraction * images.shape[0])
    if n_clean == images.shape[0]:
        return images
    x, y = images[n_clean:], labels[n_clean:]
    options = {"generator": generator, "amp": amp, "channels_last": channels_last, "backend": backend}
    if recipe.name == "pgd":
        adv = PGD(model, eps=recipe.eps, alpha=recipe.step_size, steps=recipe.steps, **options)(x, y)
    elif recipe.name == "fgsm-rs":
        adv = FGSM(model, eps=recipe.eps, alpha=recipe.step_size, random_start=True, **options)(x, y)
    else:
        adv = trades_attack(model, x, recipe, generator=generator, amp=amp, backend=backend)
    if n_clean == 0:
        return adv
    return torch.cat([images[:n_clean], adv.to(memory_format=torch.contiguous_format).to(images.dtype)])


def trades_attack(
    model: nn.Module,
    images: torch.Tensor,
    recipe: Recipe,
    *,
    generator: torch.Generator | None = None,
    amp: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """TRADES' inner maximisation: from x + 0.001 N(0, 1), `steps` signed steps up the gradient
    of KL(f(x_adv) || f(x)) (summed), projected onto the eps ball and [0, 1] by the fused op."""
    autocast = torch.autocast(images.device.type, dtype=amp, enabled=amp is not None)
    with torch.inference_mode(False), torch.enable_grad(), attack_mode(model, "eval"):
        x = images.detach()
        with torch.no_grad(), autocast:
            p_clean = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        x_adv = torch.empty_like(x).copy_(x.float() + 0.001 * noise)
        ops.linf_project(x_adv, x, recipe.eps, out=x_adv, backend=backend)
        for _ in range(recipe.steps):
            x_adv.requires_grad_(True)
            with autocast:
                log_p_adv = F.log_softmax(model(x_adv).float(), dim=1)
            kl = F.kl_div(log_p_adv, p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach()
            ops.linf_step(x_adv, grad, x, recipe.eps, recipe.step_size, out=x_adv, backend=backend)
        return x_adv


def training_loss(
    model: nn.Module, images: torch.Tensor, train_images: torch.Tensor, labels: torch.Tensor, recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss to back-propagate, logits on train_images). TRADES: CE on the clean images plus
    beta * KL(f(x_adv) || f(x)) (batch mean), from one forward pass over [x; x_adv] (so that
    DistributedDataParallel sees one forward per backward; BatchNorm statistics cover both);
    distill: the cross-entropy at the recipe's temperature against the teacher's soft labels
    (the teacher runs in eval mode and is left as it was) or the labels; the others: CE on
    train_images."""
    if recipe.name == "distill":
        logits = model(train_images)
        targets = labels
        if recipe.teacher is not None:
            with torch.no_grad(), attack_mode(recipe.teacher, "eval"):
                targets = soft_labels(recipe.teacher(images), recipe.temperature)
        return distillation_loss(logits, targets, recipe.temperature), logits
    if recipe.name != "trades":
        logits = model(train_images)
        return F.cross_entropy(logits.float(), labels), logits
    both = model(torch.cat([images, train_images.to(images.dtype)]))
    clean_logits, logits = both[: images.shape[0]], both[images.shape[0] :]
    kl = F.kl_div(F.log_softmax(logits.float(), 1), F.softmax(clean_logits.float(), 1), reduction="batchmean")
    return F.cross_entropy(clean_logits.float(), labels) + recipe.beta * kl, logits


def free_replays(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    delta: torch.Tensor | None,
    recipe: Recipe,
    *,
    amp: torch.dtype | None = None,
    backend: str = "auto",
    after_step=None,
) -> tuple[torch.Tensor, float, int]:
    """Free-AT on one batch: `replays` times, one forward and backward on clamp(x + delta) that
    steps the optimizer and moves delta by alpha * sign(grad) inside the eps ball. `delta` carries
    over from the previous batch (None or another shape starts from zero). `after_step()` runs
    after each optimizer step (a per-iteration schedule). Returns (delta, summed loss, correct
    predictions over the replays)."""
    x = images.detach()
    if delta is None or delta.shape != x.shape:
        delta = torch.zeros_like(x)
    autocast = torch.autocast(x.device.type, dtype=amp, enabled=amp is not None)
    total_loss, correct = 0.0, 0
    for _ in range(recipe.replays):
        x_adv = (x + delta).clamp_(0, 1).requires_grad_(True)
        with autocast:
            logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        stepped = ops.linf_step(x_adv.detach(), x_adv.grad, x, recipe.eps, recipe.step_size, backend=backend)
        delta = stepped - x
        total_loss += float(loss.detach()) * x.shape[0]
        correct += int((logits.argmax(1) == labels).sum())
    return delta.detach(), total_loss, correct
