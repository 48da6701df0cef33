"""Defensive distillation's training loss (Papernot et al. 2016, "Distillation as a Defense to
Adversarial Perturbations against Deep Neural Networks", https://arxiv.org/abs/1511.04508).

The network is trained with its logits divided by a temperature T and deployed at T = 1. The
first network (the teacher) learns the hard labels at T; the distilled network (the student)
learns the teacher's softmax at T as soft labels, also at T. Deployed at T = 1, the logits are
about T times larger than those of a network trained normally: the softmax saturates, the
cross-entropy gradient underflows to zero, and plain PGD with cross-entropy fails. Carlini and
Wagner (2016, "Defensive Distillation is Not Robust to Adversarial Examples") attack the logits
instead, with the margin loss, which the scaling does not hide.

The recipe that trains with it is ``Recipe("distill", temperature=T, teacher=...)`` in
:mod:`fastadv.recipes` (``fastadv train --recipe distill``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_labels(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's softmax at `temperature` (float32 [B, K]), the student's targets."""
    return F.softmax(teacher_logits.detach().float() / temperature, dim=1)


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """The mean cross-entropy of softmax(logits / T) against `targets`: class indices [B] (the
    teacher's own training) or probabilities [B, K] (the student's soft labels)."""
    scaled = logits.float() / temperature
    if targets.dim() == 1:
        return F.cross_entropy(scaled, targets)
    return -(targets * F.log_softmax(scaled, dim=1)).sum(1).mean()
