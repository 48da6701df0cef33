"""Adversarial training: `fit`, with the recipes of `fastadv.recipes`, checkpoints and resume.
(The digits models fastadv attacks by default are trained with it: `fastadv.digits_models`.)"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import _distributed
from . import checks as check
from .checkpoint import fingerprint, rng_state, save_atomic, set_rng_state
from .checkpoint import load as load_checkpoint
from .data import BatchStream, Selection, Source, as_selection
from .data.loader import workers_for
from .evaluation import data_fingerprint, evaluate
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
    train_data: tuple[torch.Tensor, torch.Tensor] | Source | Selection,
    *,
    recipe: Recipe | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cyclic",
    val_data: tuple[torch.Tensor, torch.Tensor] | Source | Selection | None = None,
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
    workers: int | None = None,
    run_identity: dict[str, str] | None = None,
) -> list[dict]:
    """Trains `model` in place with `recipe` (default PGD-AT at 8/255) and returns the history:
    one dict per epoch (epoch, lr, train_loss, train_accuracy on the trained-on batches,
    clean_accuracy and robust_accuracy under PGD-`val_steps` at `val_eps` (default recipe.eps) on
    `val_data`, seconds).

    train_data / val_data: (images [N, C, H, W] in [0, 1], labels [N] int64), on any device, or
    streamed data sets of fastadv.data (read by `workers` processes: see evaluate); the model's
    device is used. Under torch.distributed (torchrun) the model trains as
    DistributedDataParallel, each rank on its share of every epoch's permutation (`batch_size`
    per rank), and rank 0 writes the checkpoints. Batches are shuffled by a generator seeded with ``seed + epoch`` and
    attacks draw from one seeded per epoch, so a run resumed from a checkpoint follows the same
    path as an uninterrupted one. With `checkpoint_dir`, ``latest.pt`` (model, optimizer,
    schedule, every RNG state, epoch, history) is written atomically after each epoch and
    ``model.pt`` (fastadv.models.load) at the end; `resume` continues from ``latest.pt`` if present
    (its settings must match). `deterministic` turns on torch.use_deterministic_algorithms for the
    run. The model ends in eval mode. A loss or weights that become NaN or infinite stop the run
    with a ValueError; ``latest.pt`` keeps the last good epoch. `run_identity`: further facts
    (name -> string) that a resume must find unchanged besides the settings, the architecture and
    the data (``fastadv train`` records the --init model's weights).
    """
    recipe = recipe or Recipe()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a fastadv.recipes.Recipe, got {type(recipe).__name__}")
    data = as_selection("train_data", train_data)
    workers_for(data, workers)  # checked before any work
    if val_data is not None:
        val_data = as_selection("val_data", val_data)
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("val_steps", val_steps)):
        check.positive_int(name, value)
    check.choice("optimizer", optimizer, OPTIMIZERS)
    check.choice("schedule", schedule, SCHEDULES)
    check.number("lr", lr, above=0)
    check.number("momentum", momentum, at_least=0)
    check.number("weight_decay", weight_decay, at_least=0)
    check.optional_number("val_eps", val_eps, at_least=0)
    amp_dtype = check.amp_dtype(amp)
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs checkpoint_dir")
    config = FitConfig(recipe.as_dict(), epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule, seed,
                       None if amp_dtype is None else str(amp_dtype), channels_last)  # fmt: skip
    opt, scheduler = _optimizer_and_schedule(model, config, len(data), recipe)
    run = _Run(model=model, trained=model, optimizer=opt, scheduler=scheduler, data=data, recipe=recipe,
               batch_size=batch_size, seed=seed, amp=amp_dtype, channels_last=channels_last, backend=backend,
               progress=progress, workers=workers)  # fmt: skip
    latest = None if checkpoint_dir is None else os.path.join(checkpoint_dir, "latest.pt")
    # what a checkpoint is of: the architecture (a resumed run's first weights are overwritten)
    # and the training data, so that a resume with another model or data is refused
    identity = {} if latest is None else {"model": fingerprint(model.state_dict().items(), values=False),
                                          "data": data_fingerprint(data), **(run_identity or {})}  # fmt: skip
    history, first_epoch = _resume(run, latest, config, identity) if resume else ([], 0)
    run.trained = _data_parallel(model, run.device, run.world)
    with _deterministic_algorithms(deterministic):
        for epoch in range(first_epoch, epochs):
            try:
                record = _one_epoch(run, epoch)
            except _NonFinite as error:
                kept = f"{latest} keeps epoch {epoch}" if latest is not None and epoch > 0 else "no checkpoint kept"
                raise ValueError(f"training stopped: {error}; {kept} (a smaller lr may help)") from None
            history.append(record)
            if val_data is not None:
                record.update(_validation(run, val_data, recipe.eps if val_eps is None else val_eps, val_steps, epoch))
            if latest is not None and run.rank == 0:
                _save_checkpoint(run, latest, epoch, config, identity, history)
            _distributed.barrier()  # nobody runs ahead of the checkpoint
    model.eval()
    if checkpoint_dir is not None and run.rank == 0 and getattr(model, "fastadv_spec", None) is not None:
        from .models import save

        save(model, os.path.join(checkpoint_dir, "model.pt"), recipe=recipe.as_dict(), history=history)
    return history


@dataclass(eq=False)
class _Run:
    """What the epochs of one `fit` share. `trained` is the module the training loss runs
    through (the DistributedDataParallel wrapper under torch.distributed); attacks use `model`."""

    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data: Selection
    recipe: Recipe
    batch_size: int
    seed: int
    amp: torch.dtype | None
    channels_last: bool
    backend: str
    progress: bool
    workers: int | None
    device: torch.device = field(init=False)
    rank: int = field(init=False)
    world: int = field(init=False)

    def __post_init__(self):
        self.device = next(iter(self.model.parameters()), torch.empty(0)).device
        self.rank, self.world = _distributed.rank_and_world()


def _optimizer_and_schedule(model: nn.Module, config: FitConfig, samples: int, recipe: Recipe):
    """The optimizer and its per-iteration learning-rate schedule over the whole run."""
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)  # fmt: skip
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-samples // config.batch_size) * (recipe.replays if recipe.name == "free" else 1)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: _lr_factor(config.schedule, it, total))
    return opt, scheduler


def _resume(run: _Run, latest: str, config: FitConfig, identity: dict[str, str]) -> tuple[list[dict], int]:
    """Restores the model, optimizer, schedule and RNG states from `latest` when it exists (its
    settings must be `config`, its model and data those of `identity`); returns (history so
    far, first epoch to run)."""
    if not os.path.exists(latest):
        return [], 0
    state = load_checkpoint(latest, "training")
    expected, found = {**asdict(config), **identity}, {**state["config"], **state.get("identity", {})}
    changed = [key for key, value in expected.items() if found.get(key) != value]
    if changed:
        raise ValueError(f"resume: {latest} belongs to another run (changed: {', '.join(changed)})")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["history"], state["epoch"] + 1


def _data_parallel(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """The module the training loss runs through: under torch.distributed, DistributedDataParallel
    (gradients averaged over ranks); the model itself otherwise."""
    if world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def _deterministic_algorithms(on: bool):
    """torch.use_deterministic_algorithms(True) inside when `on`; the previous setting after."""
    before = torch.are_deterministic_algorithms_enabled()
    if on:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _validation(run: _Run, val_data, eps: float, steps: int, epoch: int) -> dict:
    """Clean accuracy and robust accuracy under PGD-`steps` at `eps` on `val_data`."""
    report = evaluate(run.model, val_data, ["pgd"], [eps], steps=steps, batch_size=run.batch_size,
                      seed=run.seed + epoch, amp=run.amp, channels_last=run.channels_last, backend=run.backend,
                      progress=False, workers=run.workers)  # fmt: skip
    return {"clean_accuracy": report["clean_accuracy"], "robust_accuracy": report["worst_case"][0]["robust_accuracy"]}


def _save_checkpoint(run: _Run, latest: str, epoch: int, config: FitConfig, identity: dict, history: list) -> None:
    """latest.pt after `epoch`: everything `_resume` restores, written atomically."""
    save_atomic({"kind": "training", "epoch": epoch, "config": asdict(config), "identity": identity,
                 "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "scheduler": run.scheduler.state_dict(), "rng": rng_state(), "history": history}, latest)  # fmt: skip


class _NonFinite(ValueError):
    """The loss or the weights became NaN or infinite."""


def _one_epoch(run: _Run, epoch: int) -> dict:
    """One pass over the data: each rank its share of the epoch's permutation (seeded by
    seed + epoch), attacks drawing from a generator seeded per epoch."""
    from tqdm import tqdm

    model, trained, opt, recipe = run.model, run.trained, run.optimizer, run.recipe
    start_time = time.perf_counter()
    order = torch.randperm(len(run.data), generator=torch.Generator().manual_seed(run.seed + epoch))
    if run.world > 1:
        # every rank takes its share of the same permutation; all take as many batches
        share = len(run.data) // run.world
        order = order[run.rank * share : (run.rank + 1) * share]
    attack_generator = torch.Generator(device=run.device).manual_seed(run.seed * 100_003 + epoch)
    autocast = torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None)
    total_loss, correct, seen = 0.0, 0, 0
    free_delta = None
    model.train()
    batches = [(number, order[start : start + run.batch_size].tolist())
               for number, start in enumerate(range(0, order.shape[0], run.batch_size))]  # fmt: skip
    stream = BatchStream(run.data, batches, run.device, workers_for(run.data, run.workers))
    for batch in tqdm(stream, desc=f"epoch {epoch + 1}", disable=not run.progress or run.rank, leave=False,
                      unit="batch"):  # fmt: skip
        x, y, number = batch.x, batch.y, batch.index
        if not y.numel():  # every image of the batch was bad and skipped
            continue
        if run.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if recipe.name == "free":
            free_delta, loss_sum, hits = free_replays(trained, opt, x, y, free_delta, recipe, amp=run.amp,
                                                      backend=run.backend, after_step=run.scheduler.step)  # fmt: skip
            _check_finite(loss_sum, epoch, number)
            total_loss, correct, seen = total_loss + loss_sum, correct + hits, seen + recipe.replays * x.shape[0]
            continue
        x_train = adversarial_batch(model, x, y, recipe, generator=attack_generator, amp=run.amp,
                                    channels_last=run.channels_last, backend=run.backend)  # fmt: skip
        with autocast:
            loss, logits = training_loss(trained, x, x_train, y, recipe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.scheduler.step()
        loss_value = float(loss.detach())  # the one sync per batch there always was
        _check_finite(loss_value, epoch, number)
        total_loss += loss_value * x.shape[0]
        correct += int((logits.argmax(1) == y).sum())
        seen += x.shape[0]
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise _NonFinite(f"parameters became non-finite in epoch {epoch + 1} ({', '.join(bad[:3])})")
    if run.world > 1:
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64)
        total_loss, correct, seen = _distributed.all_reduce(totals).tolist()
    return {
        "epoch": epoch + 1,
        "lr": opt.param_groups[0]["lr"],
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "seconds": time.perf_counter() - start_time,
    }


def _check_finite(loss: float, epoch: int, batch: int) -> None:
    if not math.isfinite(loss):
        raise _NonFinite(f"the loss became {loss} in epoch {epoch + 1}, batch {batch + 1}")
