"""Per-sample attack losses and the success test, shared by every attack.

Both losses measure how far the model is from predicting `labels`: an untargeted attack
ascends them, a targeted one (labels are then the targets) descends them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin")


def per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """float32 [B]. "ce": cross-entropy of `labels`. "margin" (Carlini and Wagner's f6 without
    the kappa clamp): the best other logit minus the logit of `labels`."""
    logits = logits.float()  # under autocast the logits may be half precision
    if name == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    label_logit = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - label_logit


def is_success(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """bool [B]: the prediction is the target (targeted) or is not the label (untargeted)."""
    predicted = logits.argmax(dim=1)
    return predicted == labels if targeted else predicted != labels
