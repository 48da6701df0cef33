"""The attacks, one per file, with the names and defaults of torchattacks:
``PGD(model, eps=8/255, alpha=2/255, steps=10)(images, labels)``.

Layout: `base.py` is the root class :class:`Attack` (options and which of them an attack
supports, model safety, input checks, normalization, autocast, layout); `gradient.py` the
gradient loop :class:`GradientAttack` (restarts, early stopping with compaction, CUDA graphs,
random start, the fused step) that FGSM, PGD, PGDL2, MIFGSM and APGD/APGDT run on; CW, DeepFool,
FAB, JSMA and Square (score-based, no gradients) run their own loops on the root (FAB's projection is
`boundary_projection.py`); `autoattack.py` is AutoAttack and AutoAttackLite; `catalog.py` the attack
catalogue (every attack fastadv runs by name, with its settings); `model_mode.py` the model-mode
context `attack_mode`, which attacks and the layers above run a model in.
"""

from .apgd import APGD
from .apgdt import APGDT
from .base import Attack, UnsupportedOption
from .cw import CW
from .deepfool import DeepFool
from .fab import FAB
from .fgsm import FGSM
from .functional import fgsm, pgd
from .gradient import GradientAttack
from .jsma import JSMA
from .mifgsm import MIFGSM
from .model_mode import MODEL_MODES, attack_mode
from .pgd import PGD
from .pgdl2 import PGDL2
from .result import AttackResult
from .square import Square

__all__ = [
    "APGD",
    "APGDT",
    "Attack",
    "AttackResult",
    "CW",
    "DeepFool",
    "FAB",
    "FGSM",
    "GradientAttack",
    "JSMA",
    "MIFGSM",
    "MODEL_MODES",
    "PGD",
    "PGDL2",
    "Square",
    "UnsupportedOption",
    "attack_mode",
    "fgsm",
    "pgd",
]
