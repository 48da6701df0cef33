"""fastadv: fast adversarial attacks, adversarial training and robustness evaluation for PyTorch.

The core is one fused kernel per attack step (sign step, eps-ball projection, clamp), on the
torch (reference), triton, cpu and cuda backends; the attacks (FGSM, PGD, PGDL2, MIFGSM, APGD, APGDT;
CW, DeepFool, JSMA) run on them. See README.md and DESIGN.md.
"""

from .attacks import (
    APGD,
    APGDT,
    CW,
    FGSM,
    JSMA,
    MIFGSM,
    PGD,
    PGDL2,
    Attack,
    AttackResult,
    DeepFool,
    GradientAttack,
    UnsupportedOption,
    fgsm,
    pgd,
)
from .ops import available_backends, l2_project, l2_step, linf_project, linf_step

__version__ = "0.1.0"
__all__ = [
    "APGD",
    "APGDT",
    "CW",
    "DeepFool",
    "FGSM",
    "JSMA",
    "MIFGSM",
    "PGD",
    "PGDL2",
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
    "__version__",
]
