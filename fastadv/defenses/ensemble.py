"""`Ensemble(models, combine)`: several classifiers as one, their outputs averaged."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .. import checks as check

COMBINE = ("logits", "probs")


class Ensemble(nn.Module):
    """The average of `models` (nn.Modules mapping the same images to [B, K] logits):

    - combine="logits": the mean of the members' logits;
    - combine="probs": the log of the mean of the members' softmax probabilities. It is returned
      as a log so that attacks and `evaluate` get logit-like outputs: its argmax is the class
      of highest mean probability, and cross-entropy on it is the cross-entropy of the mean
      probabilities (computed stably, with logsumexp).

    Attacks differentiate through every member; the members are submodules, so each member's
    modes, requires_grad flags, buffers and .grad fields are restored as any model's are.

    Raises: ValueError naming `models` for an empty ensemble or members with different class
    counts (known from fastadv's models at construction, otherwise found at the first call);
    TypeError naming `models[i]` for a member that is not an nn.Module; ValueError naming
    `combine` for another combination.
    """

    def __init__(self, models: Iterable[nn.Module], combine: str = "logits"):
        super().__init__()
        if isinstance(models, nn.Module) or not isinstance(models, Iterable):
            raise TypeError(f"models must be a list of nn.Modules, got {type(models).__name__}")
        members = list(models)
        if not members:
            raise ValueError("models: an ensemble needs at least one model, got none")
        for index, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{index}] must be a torch.nn.Module, got {type(m).__name__}")
        declared = [_declared_classes(m) for m in members]
        known = {k for k in declared if k is not None}
        if len(known) > 1:
            raise ValueError(f"models: the members have different class counts ({_counts(declared)})")
        self.combine = check.choice("combine", combine, COMBINE)
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = [m(images) for m in self.members]
        shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in outputs]
        if any(s is None or len(s) != 2 for s in shapes):
            raise ValueError(f"models: every member must return [B, K] logits, got {shapes}")
        if len({s[1] for s in shapes}) > 1:
            raise ValueError(f"models: the members have different class counts ({_counts([s[1] for s in shapes])})")
        stacked = torch.stack(outputs)
        if self.combine == "logits":
            return stacked.mean(0)
        log_probs = torch.log_softmax(stacked.float(), dim=2)
        return (torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))).to(stacked.dtype)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"


def _declared_classes(model: nn.Module) -> int | None:
    """The class count a model declares before it runs: fastadv's models record it, and a
    Sequential ending in a Linear layer has its out_features; None when unknown."""
    spec = getattr(model, "fastadv_spec", None)
    if isinstance(spec, dict) and isinstance(spec.get("kwargs", {}).get("num_classes"), int):
        return spec["kwargs"]["num_classes"]
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], nn.Linear):
        return model[-1].out_features
    return None


def _counts(counts: list) -> str:
    return ", ".join(f"member {i}: {'?' if k is None else k}" for i, k in enumerate(counts))
