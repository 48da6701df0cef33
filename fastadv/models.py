"""Models: the architectures the tests, the benchmarks and the command line use, fastadv's model
files (`save` / `load`), and the standard undefended digits classifier. `load` also reads the
formats of model_formats.py: TorchScript, torch.export programs and `module:callable` factories
with their weights.

`small_cnn` is the digits classifier (trains to ~98% in seconds on a CPU). `resnet18` is the
CIFAR-style ResNet-18 (3x3 stem, no max-pool; He et al. 2016, as used in adversarial-training
papers) that benchmarks time with random weights; it needs no torchvision. `train_standard` is a
plain cross-entropy training loop, and `standard_digits_model()` the small_cnn it trains on the
digits (once: it is cached in the file `fastadv eval` uses): the model `fastadv eval`, the tests
and the benchmarks attack by default.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import checks as check
from .checkpoint import CheckpointError, fingerprint, save_atomic
from .checkpoint import load as _load_checkpoint
from .data import digits
from .model_formats import (
    KIND_NAMES,
    MissingWeights,  # noqa: F401  (public here: fastadv.models.MissingWeights)
    ModelError,  # noqa: F401  (public here: fastadv.models.ModelError)
    Normalized,
    RandomWeightsWarning,  # noqa: F401
    WeightsWithoutModel,
    check_logits,  # noqa: F401  (public here: fastadv.models.check_logits)
    file_kind,
    is_factory,
    load_exported,
    load_factory,
    load_torchscript,
)

ARCHITECTURES = {}  # name -> factory; filled below


def _remember_spec(model: nn.Module, arch: str, **kwargs) -> nn.Module:
    """Records how to rebuild the model, so that `save` / `load` need no code from the user."""
    model.fastadv_spec = {"arch": arch, "kwargs": kwargs}
    return model


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Sequential:
    """Two 3x3 conv blocks (width, 2*width channels, ReLU, 2x2 max-pool) and two linear layers.
    Accepts ``[B, in_channels, H, W]`` with H and W divisible by 4; the head adapts to any such
    size through adaptive average pooling to 4x4."""
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
        check.positive_int(name, value)
    model = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )
    return _remember_spec(model, "small_cnn", in_channels=in_channels, num_classes=num_classes, width=width)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: [B, 3, H, W] -> [B, num_classes] logits (any H, W >= 8)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet18:
    """A CIFAR-style ResNet-18 with PyTorch's default random initialisation."""
    return _remember_spec(
        ResNet18(num_classes, in_channels), "resnet18", num_classes=num_classes, in_channels=in_channels
    )


ARCHITECTURES.update(small_cnn=small_cnn, resnet18=resnet18)


def save(model: nn.Module, path: str, **metadata) -> None:
    """Writes a model built by this module (its architecture, arguments and weights, plus any
    JSON-like `metadata`) to `path`, atomically, with a SHA-256 checksum of the architecture and
    weights that `load` verifies."""
    spec = getattr(model, "fastadv_spec", None)
    if spec is None:
        raise ValueError("model: save() takes models built by fastadv.models (small_cnn, resnet18)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomic({"kind": "model", "spec": spec, "state_dict": state, "metadata": metadata,
                 "sha256": _checksum(spec, state)}, path)  # fmt: skip


def _checksum(spec: dict, state: dict) -> str:
    """SHA-256 of the architecture (spec) and the weights' names, dtypes, shapes and bytes."""
    text = json.dumps(spec, sort_keys=True, default=repr) + fingerprint(state.items())
    return hashlib.sha256(text.encode()).hexdigest()


def load(
    path_or_spec: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    mean=None,
    std=None,
    allow_random_weights: bool = False,
    seed: int = 0,
) -> nn.Module:
    """A model, in eval mode on `device`, from

    - a fastadv model file (:func:`save`, ``fastadv train``'s model.pt),
    - a TorchScript archive (``torch.jit.save``),
    - a torch.export program (``torch.export.save``, .pt2; exported in eval mode, best with a
      dynamic batch dim: one exported with a fixed batch size runs in chunks of that size),
    - a factory ``"module:callable"`` (``"torchvision.models:resnet50"``, ``"timm:resnet18"``,
      ``"fastadv.models:small_cnn"``) called with weights=None / pretrained=False and, where it
      takes it, `num_classes`; `weights` is then the state_dict to load into it (a .pt/.pth
      file read with weights_only=True, or .safetensors). Nothing is downloaded. Without
      `weights` its model would keep random weights: MissingWeights (a ModelError) unless
      `allow_random_weights`, then a RandomWeightsWarning. A factory runs with torch's global
      generator seeded by `seed` (the caller's generator state given back): the same seed, the
      same random weights.

    The format is read from the file's contents, not its name. With `mean` and `std` (one value
    or one per channel) the model is wrapped in :class:`Normalized`: it takes images in [0, 1].
    `check_logits(model, images, num_classes)` checks what it returns on a first batch.

    Raises ModelError (a CheckpointError, a ValueError) naming the file or factory when the file
    is missing, damaged (its checksum does not match), not a model, holds non-finite weights, or
    when the factory does not import or the weights do not fit it; ValueError when `weights` or
    `num_classes` is given with a model file (they are a factory's).
    """
    spec = os.fspath(path_or_spec)
    if is_factory(spec):
        model = load_factory(spec, None if weights is None else os.fspath(weights), num_classes=num_classes,
                             allow_random_weights=allow_random_weights, seed=seed)  # fmt: skip
    else:
        kind = file_kind(spec)
        if weights is not None:
            raise ValueError(f"weights: given with {spec}, which is {KIND_NAMES[kind]} holding its own weights; "
                             "weights go with a module:callable factory")  # fmt: skip
        if num_classes is not None:
            raise ValueError(f"num_classes: given with {spec}, which is {KIND_NAMES[kind]} (its classes are fixed); "
                             "check them with check_logits(model, images, num_classes)")  # fmt: skip
        if kind == "torchscript":
            model = load_torchscript(spec, device)
        elif kind == "export":
            model = load_exported(spec, device)
        elif kind == "safetensors":
            raise WeightsWithoutModel(spec)
        else:
            model = _load_model_file(spec)
    if mean is not None or std is not None:
        model = Normalized(model, mean, std)
    return model.eval().to(device)


def _load_model_file(path: str) -> nn.Module:
    """The model :func:`save` wrote to `path` (on the CPU)."""
    saved = _load_checkpoint(path, "model")
    spec, state = saved.get("spec"), saved.get("state_dict")
    if not (isinstance(spec, dict) and isinstance(spec.get("arch"), str) and isinstance(spec.get("kwargs", {}), dict)):
        raise CheckpointError(f"{path}: malformed spec {spec!r:.80} (expected {{'arch': name, 'kwargs': {{...}}}})")
    if not (isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())):
        raise CheckpointError(f"{path}: its state_dict is not a dict of tensors")
    # Model files written before checksums were added have no "sha256": they still load.
    if "sha256" in saved and saved["sha256"] != _checksum(spec, state):
        raise CheckpointError(f"{path}: damaged (its weights do not match the checksum stored with them)")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: {name} holds non-finite values (NaN or infinity)")
    factory = ARCHITECTURES.get(spec["arch"])
    if factory is None:
        raise CheckpointError(f"{path}: unknown architecture {spec['arch']!r}")
    try:
        model = factory(**spec.get("kwargs", {}))
        model.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())  # the whole message, on one line
        raise CheckpointError(f"{path}: the weights do not fit {spec['arch']} ({message})") from None
    return model


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


_DEFAULT = "default"


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
