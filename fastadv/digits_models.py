"""The digits models that `fastadv eval`, the benchmarks and the tests attack by default: small_cnn
trained on the embedded digits' training split by `fastadv.train.fit`, with one set of settings
(the digits recipe, DIGITS_TRAINING: Adam at 2e-3, batches of 64, no weight decay, fit's cyclic
schedule, seeded) and a training recipe of fastadv.recipes:

- `standard_digits_model()`: the undefended one (recipe "standard", 15 epochs), cached in the file
  `fastadv eval` uses;
- `fgsm_rs_digits_model()`: the robust one (recipe "fgsm-rs" at eps 0.1, 10 epochs).

They train through `fit`, so this module sits above fastadv.train (docs/DESIGN.md's layers);
the architectures and model files are fastadv.models'.
"""

from __future__ import annotations

import os
import warnings

import torch
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
    """Trains `model` in place on the digits' training split with `recipe` and DIGITS_TRAINING
    (fit's batches and attacks seeded by `seed`); returns it in eval mode."""
    fit(model, digits("train"), recipe=recipe, epochs=epochs, seed=seed, progress=False, **DIGITS_TRAINING)
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
    small_cnn (torch seeded with 0) trained with the recipe "standard" for 15 epochs (about 99%
    test accuracy). In eval mode, on the CPU.

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
    model = train_digits_model(small_cnn(), Recipe("standard"), epochs=15)
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
