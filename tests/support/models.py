"""The models the tests attack: the seeded digits CNN and the FGSM-RS-trained one (trained once,
cached between runs), their accuracy, and wrappers that make a model's gradients infinite or
count its forward calls, and a small CNN with BatchNorm (the buffers every real CNN has)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from fastadv.data import digits
from fastadv.digits_models import fgsm_rs_digits_model as _train_fgsm_rs
from fastadv.digits_models import standard_digits_model
from fastadv.models import small_cnn

_REPO = Path(__file__).resolve().parents[2]


def _cache_file(name: str, sources: tuple[str, ...]) -> Path:
    """Where trained test weights are kept between test runs (a quick `-m "not slow"` loop would
    spend most of its time training them). The name holds a hash of what determines them, the
    given fastadv sources and torch's version, so a change to any retrains."""
    key = hashlib.sha256(torch.__version__.encode())
    for source in sources:
        key.update((_REPO / "fastadv" / source).read_bytes())
    return _REPO / ".pytest_cache" / "fastadv" / f"{name}-{key.hexdigest()[:16]}.pt"


def _cached_state(cache: Path, train) -> dict:
    """The state dict in `cache`, or `train()`'s model's, written there atomically (a concurrent
    run never reads half a file)."""
    try:
        return torch.load(cache, weights_only=True)
    except (OSError, RuntimeError, EOFError):
        pass  # not cached yet, or unreadable: train
    state = {k: v.clone() for k, v in train().state_dict().items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, partial)
    partial.replace(cache)
    return state


# what the digits models' weights depend on (fastadv.digits_models; the FGSM-RS one trains with fit)
_DIGITS_SOURCES = ("models/architectures.py", "data/opening.py", "digits_models.py", "recipes.py", "train.py")


@functools.lru_cache(maxsize=1)
def _trained_digits_state() -> tuple[dict, torch.Tensor, torch.Tensor]:
    images, labels = digits("test")
    # cache=None: trained here (keyed by the sources' hash), never read from the user's cache
    train = functools.partial(standard_digits_model, cache=None)
    return _cached_state(_cache_file("digits", _DIGITS_SOURCES), train), images, labels


def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh copy of the seeded digits CNN (eval mode) and the test split."""
    state, images, labels = _trained_digits_state()
    model = small_cnn()
    model.load_state_dict(state)
    return model.eval(), images.clone(), labels.clone()


def fgsm_rs_digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh copy of the digits CNN adversarially trained with FGSM-RS at eps 0.1 (10 epochs,
    seeded; about 97% clean and 70% robust accuracy under PGD-20), eval mode, and the test split."""
    state = _cached_state(_cache_file("digits-fgsm-rs", _DIGITS_SOURCES), _train_fgsm_rs)
    model = small_cnn()
    model.load_state_dict(state)
    images, labels = digits("test")
    return model.eval(), images, labels


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


class GammaModel(nn.Module):
    """x ** (1 / 2.2) before the network: the input gradient is infinite at black pixels, which is
    how the tests make attacks meet non-finite gradients and candidates."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t):
        return self.net(t.pow(1 / 2.2))


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


class BatchNormCNN(nn.Module):
    """Two convolutions with BatchNorm on [B, 3, 8, 8] images, a linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def trained_batchnorm_cnn() -> nn.Module:
    """A seeded BatchNormCNN in eval mode with moved running statistics (not the initial 0/1) and
    num_batches_tracked > 0: three forward passes in train mode on random images."""
    torch.manual_seed(0)
    model = BatchNormCNN()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 8, 8))
    return model.eval()
