"""Per-sample attack losses and the success test, shared by every attack.

Both losses measure how far the model is from predicting `labels`: an untargeted attack
ascends them, a targeted one (labels are then the targets) descends them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin", "dlr")


def per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """float32 [B]. "ce": cross-entropy of `labels`. "margin" (Carlini and Wagner's f6 without
    the kappa clamp): the best other logit minus the logit of `labels`. "dlr" (Croce and Hein's
    difference of logits ratio, needs K >= 3): the margin divided by z_1 - z_3, the gap between
    the largest and third-largest logits, which makes it invariant to the logits' scale."""
    logits = logits.float()  # under autocast the logits may be half precision
    if name == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    label_logit = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf"))  # one op, not one_hot + mask
    margin = others.amax(dim=1) - label_logit
    if name == "margin":
        return margin
    top = logits.topk(3, dim=1).values
    return margin / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Croce and Hein's targeted DLR, to ascend: (z_t - z_y) / (z_1 - (z_3 + z_4) / 2), float32 [B]
    (needs K >= 4)."""
    logits = logits.float()
    top = logits.topk(4, dim=1).values
    gap = logits.gather(1, targets.unsqueeze(1)) - logits.gather(1, labels.unsqueeze(1))
    return gap.squeeze(1) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def is_success(predicted: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """bool [B]: the predicted class (int64 [B]) is the target (targeted) or is not the label
    (untargeted)."""
    return predicted == labels if targeted else predicted != labels
