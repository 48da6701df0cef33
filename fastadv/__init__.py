"""fastadv: fast adversarial attacks, adversarial training and robustness evaluation for PyTorch.

The core is one fused kernel per attack step (sign step, eps-ball projection, clamp), on the
torch (reference), triton, cpu and cuda backends. See README.md and DESIGN.md.
"""

from .ops import available_backends, l2_project, l2_step, linf_project, linf_step

__version__ = "0.1.0"
__all__ = ["available_backends", "l2_project", "l2_step", "linf_project", "linf_step", "__version__"]
