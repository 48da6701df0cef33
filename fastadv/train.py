"""Adversarial training: `fit`, with the recipes of `fastadv.recipes`, checkpoints and resume.
(The quick undefended baseline, `train_standard`, is in `fastadv.models`.)"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import _distributed
from . import _validate as check
from .checkpoint import load as load_checkpoint
from .checkpoint import rng_state, save_atomic, set_rng_state
from .evaluate import evaluate
from .recipes import Recipe, adversarial_batch, free_replays, training_loss

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cyclic", "step", "constant")


@dataclass
class FitConfig:
    """The settings of :func:`fit` that a resumed run must share with the one it continues."""

    recipe: dict
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    seed: int
    amp: str | None
    channels_last: bool


def _lr_factor(schedule: str, iteration: int, total: int) -> float:
    """cyclic: linear from 0 up to lr at 40% of the iterations, then down to 0 (Wong et al.'s
    triangle); step: lr, then lr/10 from 50% and lr/100 from 75%; constant: lr."""
    t = iteration / max(total, 1)
    if schedule == "cyclic":
        return t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6)
    if schedule == "step":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    return 1.0


def fit(
    model: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    *,
    recipe: Recipe | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cyclic",
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_eps: float | None = None,
    val_steps: int = 10,
    amp: torch.dtype | str | None = None,
    channels_last: bool = False,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    seed: int = 0,
    deterministic: bool = False,
    backend: str = "auto",
    progress: bool = True,
) -> list[dict]:
    """Trains `model` in place with `recipe` (default PGD-AT at 8/255) and returns the history:
    one dict per epoch (epoch, lr, train_loss, train_accuracy on the trained-on batches,
    clean_accuracy and robust_accuracy under PGD-`val_steps` at `val_eps` (default recipe.eps) on
    `val_data`, seconds).

    train_data / val_data: (images [N, C, H, W] in [0, 1], labels [N] int64), on any device; the
    model's device is used. Under torch.distributed (torchrun) the model trains as
    DistributedDataParallel, each rank on its share of every epoch's permutation (`batch_size`
    per rank), and rank 0 writes the checkpoints. Batches are shuffled by a generator seeded with ``seed + epoch`` and
    attacks draw from one seeded per epoch, so a run resumed from a checkpoint follows the same
    path as an uninterrupted one. With `checkpoint_dir`, ``latest.pt`` (model, optimizer,
    schedule, every RNG state, epoch, history) is written atomically after each epoch and
    ``model.pt`` (fastadv.models.load) at the end; `resume` continues from ``latest.pt`` if present
    (its settings must match). `deterministic` turns on torch.use_deterministic_algorithms for the
    run. The model ends in eval mode.
    """
    recipe = recipe or Recipe()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a fastadv.recipes.Recipe, got {type(recipe).__name__}")
    images, labels = _check_data("train_data", train_data)
    if val_data is not None:
        _check_data("val_data", val_data)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("val_steps", val_steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    amp_dtype = check.amp_dtype(amp)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs checkpoint_dir")
    device = next(iter(model.parameters()), torch.empty(0)).device
    config = FitConfig(recipe.as_dict(), epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule, seed,
                       None if amp_dtype is None else str(amp_dtype), channels_last)  # fmt: skip
    opt = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    )
    steps_per_epoch = -(-images.shape[0] // batch_size) * (recipe.replays if recipe.name == "free" else 1)
    total = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: _lr_factor(schedule, it, total))
    history: list[dict] = []
    first_epoch = 0
    latest = None if checkpoint_dir is None else os.path.join(checkpoint_dir, "latest.pt")
    if resume and os.path.exists(latest):
        state = load_checkpoint(latest, "training")
        if state["config"] != asdict(config):
            changed = [k for k, v in asdict(config).items() if state["config"].get(k) != v]
            raise ValueError(f"resume: {latest} was written with other settings ({', '.join(changed)})")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history, first_epoch = state["history"], state["epoch"] + 1
    free_delta = None
    rank, world = _distributed.rank_and_world()
    trained = model
    if world > 1:
        # Gradients of the training loss are averaged over ranks; attacks use the bare model.
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        for epoch in range(first_epoch, epochs):
            history.append(
                _one_epoch(
                    model,
                    opt,
                    scheduler,
                    images,
                    labels,
                    recipe,
                    epoch,
                    batch_size,
                    seed,
                    amp_dtype,
                    channels_last,
                    backend,
                    device,
                    progress,
                    free_delta,
                    trained,
                )  # fmt: skip
            )
            record = history[-1]
            if val_data is not None:
                eps = recipe.eps if val_eps is None else val_eps
                vx, vy = (t.to(device) for t in val_data)
                report = evaluate(model, (vx, vy), ["pgd"], [eps], steps=val_steps, batch_size=batch_size,
                                  seed=seed + epoch, amp=amp_dtype, channels_last=channels_last, backend=backend,
                                  progress=False)  # fmt: skip
                record["clean_accuracy"] = report["clean_accuracy"]
                record["robust_accuracy"] = report["worst_case"][0]["robust_accuracy"]
            if latest is not None and rank == 0:
                save_atomic({"kind": "training", "epoch": epoch, "config": asdict(config),
                             "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_state(), "history": history},
                            latest)  # fmt: skip
            _distributed.barrier()  # nobody runs ahead of the checkpoint
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
    model.eval()
    if checkpoint_dir is not None and rank == 0 and getattr(model, "fastadv_spec", None) is not None:
        from .models import save

        save(model, os.path.join(checkpoint_dir, "model.pt"), recipe=recipe.as_dict(), history=history)
    return history


def _check_data(name: str, data: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise TypeError(f"{name} must be a pair (images, labels) of tensors")
    images, labels = data
    if not images.is_floating_point() or images.dim() < 2:
        raise ValueError(f"{name}: images must be a floating tensor [N, ...], got {images.dtype} {tuple(images.shape)}")
    if labels.shape != images.shape[:1] or labels.is_floating_point():
        raise ValueError(f"{name}: labels must be integers of shape [{images.shape[0]}], got {tuple(labels.shape)}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(f"{name}: images must lie in [0, 1]")
    return images, labels.long()


def _one_epoch(model, opt, scheduler, images, labels, recipe, epoch, batch_size, seed, amp, channels_last, backend,
               device, progress, free_delta, trained=None) -> dict:  # fmt: skip
    """One pass over the data. `trained` is the module the training loss runs through (the
    DistributedDataParallel wrapper under torch.distributed); attacks use `model` itself."""
    from tqdm import tqdm

    trained = trained or model
    start_time = time.perf_counter()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
    rank, world = _distributed.rank_and_world()
    if world > 1:
        # every rank takes its share of the same permutation; all take as many batches
        share = images.shape[0] // world
        order = order[rank * share : (rank + 1) * share]
    attack_generator = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
    autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)
    total_loss, correct, seen = 0.0, 0, 0
    model.train()
    batches = range(0, order.shape[0], batch_size)
    for start in tqdm(batches, desc=f"epoch {epoch + 1}", disable=not progress or rank, leave=False, unit="batch"):
        index = order[start : start + batch_size]
        x, y = images[index].to(device), labels[index].to(device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if recipe.name == "free":
            free_delta, loss_sum, hits = free_replays(trained, opt, x, y, free_delta, recipe, amp=amp, backend=backend,
                                                      after_step=scheduler.step)  # fmt: skip
            total_loss, correct, seen = total_loss + loss_sum, correct + hits, seen + recipe.replays * x.shape[0]
            continue
        x_train = adversarial_batch(model, x, y, recipe, generator=attack_generator, amp=amp,
                                    channels_last=channels_last, backend=backend)  # fmt: skip
        with autocast:
            loss, logits = training_loss(trained, x, x_train, y, recipe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scheduler.step()
        total_loss += float(loss.detach()) * x.shape[0]
        correct += int((logits.argmax(1) == y).sum())
        seen += x.shape[0]
    if world > 1:
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64)
        total_loss, correct, seen = _distributed.all_reduce(totals).tolist()
    return {
        "epoch": epoch + 1,
        "lr": opt.param_groups[0]["lr"],
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "seconds": time.perf_counter() - start_time,
    }
