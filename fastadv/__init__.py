"""fastadv: fast adversarial attacks, adversarial training and robustness evaluation for PyTorch.

The core is one fused kernel per attack step (sign step, eps-ball projection, clamp), on the
torch (reference), triton, cpu and cuda backends; the attacks (FGSM, PGD, PGDL2, MIFGSM, APGD, APGDT;
CW, DeepFool, FAB, JSMA; Square, score-based) run on them. See README.md and docs/.

The attacks and ops are imported with the package; the other modules (models,
data, digits_models, defenses, evaluate, train, recipes, autoattack, plots, bench, demo) are attributes too,
imported on first use (defenses is imported with the attacks, which read its adaptive switch).
``fastadv.evaluate(model, data, ...)`` calls the evaluation function itself (the module is
callable; ``from fastadv.evaluate import evaluate`` is the same function).
"""

import importlib

from ._version import __version__
from .attacks import (
    APGD,
    APGDT,
    CW,
    FAB,
    FGSM,
    JSMA,
    MIFGSM,
    PGD,
    PGDL2,
    Attack,
    AttackResult,
    DeepFool,
    GradientAttack,
    Square,
    UnsupportedOption,
    fgsm,
    pgd,
)
from .ops import available_backends, l2_project, l2_step, linf_project, linf_step

__all__ = [
    "APGD",
    "APGDT",
    "CW",
    "DeepFool",
    "FAB",
    "FGSM",
    "JSMA",
    "MIFGSM",
    "PGD",
    "PGDL2",
    "Square",
    "Attack",
    "AttackResult",
    "GradientAttack",
    "UnsupportedOption",
    "available_backends",
    "fgsm",
    "l2_project",
    "l2_step",
    "linf_project",
    "linf_step",
    "pgd",
    "AutoAttack",
    "AutoAttackLite",
    "__version__",
]

_SUBMODULES = ("attacks", "backends", "bench", "data", "defenses", "demo", "digits_models", "evaluate",
               "models", "ops", "plots", "recipes", "train")  # fmt: skip
_LAZY_NAMES = {"AutoAttack": "attacks.autoattack", "AutoAttackLite": "attacks.autoattack"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'fastadv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES) | set(_LAZY_NAMES))
