"""fastadv's model files (`save` / `load`): a model built by architectures.py, as its architecture,
arguments and weights with a checksum. `load` also reads the formats of formats.py: TorchScript,
torch.export programs and `module:callable` factories with their weights."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings

import torch
from torch import nn

from ..checkpoint import CheckpointError, fingerprint, save_atomic
from ..checkpoint import load as _load_checkpoint
from .architectures import ARCHITECTURES
from .formats import (
    KIND_NAMES,
    REBUILT_FACTORIES,
    ModelError,
    RandomWeightsWarning,
    WeightsWithoutModel,
    file_kind,
    is_factory,
    load_exported,
    load_factory,
    load_torchscript,
    rebuilt_from_file,
)
from .interface import Normalized


def save(model: nn.Module, path: str, **metadata) -> None:
    """Writes a model built by architectures.py or by a torchvision/timm factory through `load`
    (its architecture, arguments and weights, plus any
    JSON-like `metadata`) to `path`, atomically, with a SHA-256 checksum of the architecture and
    weights that `load` verifies."""
    spec = getattr(model, "fastadv_spec", None)
    if spec is None:
        raise ValueError(
            "model: save() takes models built by fastadv.models (small_cnn, resnet18, or a "
            "module:callable factory through load)"
        )
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


def _rebuild_factory(spec: str, num_classes: int | None = None) -> nn.Module:
    """The factory's model with its initial weights (the file's are loaded next: no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return load_factory(spec, num_classes=num_classes, allow_random_weights=True)


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
    if factory is None and rebuilt_from_file(spec["arch"]):  # trained from torchvision's or timm's builder
        factory = functools.partial(_rebuild_factory, spec["arch"])
    elif factory is None and is_factory(spec["arch"]):
        raise CheckpointError(f"{path}: a model built by {spec['arch']}, which a model file may not import (only "
                              f"{' and '.join(REBUILT_FACTORIES)}' builders): load {spec['arch']} with this file as "
                              "its weights")  # fmt: skip
    if factory is None:
        raise CheckpointError(f"{path}: unknown architecture {spec['arch']!r}")
    try:
        model = factory(**spec.get("kwargs", {}))
        model.load_state_dict(state)
    except ModelError as error:  # the factory named in the file cannot be imported or called here
        raise CheckpointError(f"{path}: {error}") from None
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())  # the whole message, on one line
        raise CheckpointError(f"{path}: the weights do not fit {spec['arch']} ({message})") from None
    return model
