"""fastadv: fast adversarial attacks, adversarial training and robustness evaluation for PyTorch.

The core is one fused kernel per attack step (sign step, eps-ball projection, clamp), on the
torch (reference), triton, cpu and cuda backends; the attacks (FGSM, PGD, PGDL2, MIFGSM, APGD, APGDT;
CW, DeepFool, FAB, JSMA; Square, score-based) run on them. See README.md and docs/.

The attacks and ops are imported with the package; the other modules (models, data,
digits_models, defenses, evaluation, train, recipes, bench, demo) are attributes too, imported on
first use (defenses is imported with the attacks, which read its adaptive switch).
``fastadv.evaluate(model, data, ...)`` is the evaluation function, imported on first use from the
package that holds it: ``from fastadv.evaluation import evaluate`` is the same function.
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
    "evaluate",
    "__version__",
]

_SUBMODULES = ("attacks", "backends", "bench", "data", "defenses", "demo", "digits_models", "evaluation",
               "models", "ops", "recipes", "train")  # fmt: skip
# public names of modules imported on first use (the evaluation pulls in the data pipeline)
_LAZY_NAMES = {"AutoAttack": "attacks.autoattack", "AutoAttackLite": "attacks.autoattack", "evaluate": "evaluation"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'fastadv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES) | set(_LAZY_NAMES))
