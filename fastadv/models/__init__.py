"""Models: the architectures fastadv builds (architectures.py: small_cnn, resnet18), fastadv's
model files (files.py: save, load), the other formats `load` reads (formats.py: TorchScript,
torch.export programs, `module:callable` factories with their weights) and what every format
shares (interface.py: the normalization wrapper, the logits check). The digits models fastadv
attacks by default live above fastadv.train (the FGSM-RS one trains with fit): fastadv.digits_models."""

from .architectures import ARCHITECTURES, ResNet18, resnet18, small_cnn
from .files import load, save
from .formats import (
    KIND_NAMES,
    ExportedModel,
    MissingWeights,
    ModelError,
    RandomWeightsWarning,
    WeightsWithoutModel,
    file_kind,
    is_factory,
)
from .interface import Normalized, check_logits

__all__ = [
    "ARCHITECTURES",
    "KIND_NAMES",
    "ExportedModel",
    "MissingWeights",
    "ModelError",
    "Normalized",
    "RandomWeightsWarning",
    "ResNet18",
    "WeightsWithoutModel",
    "check_logits",
    "file_kind",
    "is_factory",
    "load",
    "resnet18",
    "save",
    "small_cnn",
]
