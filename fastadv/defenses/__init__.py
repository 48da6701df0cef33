"""Defences besides adversarial training, and what adaptive attacks need to judge them.

- Input transformations (`transforms.py`): BitDepth, JPEG, MedianFilter, RandomResizePad, put in
  front of a model with `Defended(model, [JPEG(75), BitDepth(5)])` (`defended.py`).
- Ensembles (`ensemble.py`): `Ensemble(models, combine="logits" | "probs")`.
- Defensive distillation (`distill.py`): the loss of ``Recipe("distill", ...)``.
- `context.py`: the switch an attack made with ``adaptive=True`` sets while it runs the model, so
  that transforms build BPDA's straight-through backward pass.
- `spec.py`: defences written as text ("jpeg:75,bits:5", `fastadv eval --defense`); `report.py`:
  the side-by-side comparison of non-adaptive and adaptive robust accuracy, and the flag.

docs/defenses.md says what each defence is and how each is attacked.
"""

from .context import adaptive_active, adaptive_gradients
from .defended import Defended
from .distill import distillation_loss, soft_labels
from .ensemble import Ensemble
from .report import MASKING_GAP, compare, format_comparison
from .spec import parse_defense
from .transforms import JPEG, BitDepth, MedianFilter, RandomResizePad, Transform

__all__ = [
    "JPEG",
    "MASKING_GAP",
    "BitDepth",
    "Defended",
    "Ensemble",
    "MedianFilter",
    "RandomResizePad",
    "Transform",
    "adaptive_active",
    "adaptive_gradients",
    "compare",
    "distillation_loss",
    "format_comparison",
    "parse_defense",
    "soft_labels",
]
