"""The digits models that `fastadv eval`, the benchmarks and the tests attack by default: small_cnn
trained on the embedded digits' training split with one set of settings (DIGITS_TRAINING: Adam at
2e-3, batches of 64, no weight decay, seeded):

- `standard_digits_model()`: the undefended one (15 epochs of plain cross-entropy,
  `train_standard`), cached in the file `fastadv eval` uses;
- `fgsm_rs_digits_model()`: the robust one (`fastadv.train.fit` with the recipe "fgsm-rs" at
  eps 0.1, 10 epochs, fit's cyclic schedule).

`train_standard` keeps its own short loop rather than fit's "standard" recipe: fit shuffles with
a generator seeded per epoch, which would change the standard model's weights, and tests rely on
which test images that model classifies correctly. The FGSM-RS model trains through `fit`, so this
module sits above fastadv.train (docs/DESIGN.md's layers); the architectures and model files are
fastadv.models'.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError
from .data import digits
from .models import load, save, small_cnn
from .recipes import Recipe
from .train import fit

# The one way the digits models are trained (fit's other defaults are for CIFAR-sized models);
# `fastadv train`'s digits defaults are the same.
DIGITS_TRAINING = {"batch_size": 64, "optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0}

_DEFAULT = "default"


def train_digits_model(model: nn.Module, recipe: Recipe, *, epochs: int, seed: int = 0) -> nn.Module:
    """Trains `model` in place on the digits' training split with `fastadv.train.fit`, `recipe`
    and DIGITS_TRAINING (fit's batches and attacks seeded by `seed`); returns it in eval mode."""
    fit(model, digits("train"), recipe=recipe, epochs=epochs, seed=seed, progress=False, **DIGITS_TRAINING)
    return model.eval()


def train_standard(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> nn.Module:
    """Trains `model` in place with Adam on cross-entropy, shuffling with a generator seeded by
    `seed`; leaves it in eval mode and returns it. images [N, ...], labels [N] int64."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels must have as many samples, got {images.shape[0]} and {labels.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        for start in range(0, images.shape[0], batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def digits_model_cache() -> str:
    """Where `standard_digits_model()` and `fastadv eval` keep the digits model: $FASTADV_CACHE,
    else $XDG_CACHE_HOME/fastadv, else ~/.cache/fastadv; the file digits-small_cnn-standard.pt."""
    root = os.environ.get("FASTADV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastadv"
    )
    return os.path.join(root, "digits-small_cnn-standard.pt")


def standard_digits_model(cache: str | os.PathLike | None = _DEFAULT) -> nn.Module:
    """The undefended digits classifier that `fastadv eval`, the tests and the benchmarks attack:
    small_cnn trained with train_standard for 15 epochs, torch and shuffling seeded with 0
    (about 99% test accuracy). In eval mode, on the CPU.

    cache: a fastadv model file shared with `fastadv eval` (default: :func:`digits_model_cache`).
    The model is read from it when it holds a readable model (no training: milliseconds);
    otherwise it is trained (about 30 s on a CPU) and written there (when the file cannot be
    written, a warning says so and the trained model is returned). None: always train, write
    nothing."""
    path = digits_model_cache() if cache == _DEFAULT else None if cache is None else os.fspath(cache)
    if path is not None:
        try:
            return load(path)
        except CheckpointError:
            pass  # missing or damaged: train it again
    torch.manual_seed(0)
    model = train_standard(small_cnn(), *digits("train"), epochs=15, seed=0)
    if path is not None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            save(model, path, recipe="standard")
        except OSError as error:
            warnings.warn(f"could not cache the digits model in {path}: {error.strerror}", stacklevel=2)
    return model


def fgsm_rs_digits_model() -> nn.Module:
    """small_cnn (torch seeded with 0) adversarially trained with FGSM-RS at eps 0.1 for 10
    epochs (about 97% clean and 70% robust accuracy under PGD-20 at eps 0.1), in eval mode, on
    the CPU. Trained on every call (about a minute on a CPU): callers keep it."""
    torch.manual_seed(0)
    return train_digits_model(small_cnn(), Recipe("fgsm-rs", eps=0.1), epochs=10)
