"""Attacks on one shared engine (`engine.py`), one attack per file, with the names and
defaults of torchattacks: ``PGD(model, eps=8/255, alpha=2/255, steps=10)(images, labels)``."""

from .apgd import APGD, APGDT
from .cw import CW
from .deepfool import DeepFool
from .engine import Attack, AttackBase, AttackResult
from .fgsm import FGSM
from .functional import fgsm, pgd
from .jsma import JSMA
from .mifgsm import MIFGSM
from .pgd import PGD
from .pgdl2 import PGDL2

__all__ = [
    "APGD",
    "APGDT",
    "Attack",
    "AttackBase",
    "AttackResult",
    "CW",
    "DeepFool",
    "FGSM",
    "JSMA",
    "MIFGSM",
    "PGD",
    "PGDL2",
    "fgsm",
    "pgd",
]
