"""The samples an evaluation keeps as it attacks them, for a picture (plots.plot_examples)
without attacking again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .engine import Batch, Outcome


@dataclass(frozen=True)
class Examples:
    """The first samples of an evaluation as it attacked them, for a picture
    (fastadv.evaluation.plots.plot_examples) without attacking again: at eps `eps` (the largest), the clean images and
    labels, the model's clean predictions, and per sample the adversarial image that counts (the
    first attack to fool it within the budget, else the last attack's attempt, else the clean
    image for a sample not attacked), its prediction, and the attack that fooled it (None)."""

    eps: float
    images: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    adversarial: torch.Tensor
    adversarial_pred: torch.Tensor
    fooled_by: list[str | None]


class ExampleKeeper:
    """Keeps `count` samples of the first batch this process evaluates, at eps index `eps_index`
    (copies on the CPU: nothing of the batch is held after it)."""

    def __init__(self, count: int, eps_index: int, eps: float):
        self.count, self.eps_index, self.eps = count, eps_index, eps
        self.batch_index: int | None = None
        self.kept: Examples | None = None
        self._parts: dict | None = None

    def start(self, batch: Batch, e_index: int) -> bool:
        """Whether this (batch, eps) is the one kept; if so, starts it from the clean images."""
        if e_index != self.eps_index or self.batch_index not in (None, batch.index) or self.kept is not None:
            return False
        self.batch_index, n = batch.index, min(self.count, batch.x.shape[0])
        self._parts = {"adv": batch.x[:n].detach().float().cpu().clone(), "pred": batch.clean_pred[:n].cpu().clone(),
                       "by": [None] * n, "n": n}  # fmt: skip
        return True

    def add(self, name: str, index: torch.Tensor, outcome: Outcome) -> None:
        """One attack's images of the kept samples among `index` (the samples it attacked)."""
        if outcome.adv is None or self._parts is None:
            return
        parts = self._parts
        for k in (index < parts["n"]).nonzero().squeeze(1).tolist():
            i = int(index[k])
            if parts["by"][i] is None:  # a sample fooled earlier keeps the image that fooled it
                parts["adv"][i] = outcome.adv[k].detach().float().cpu()
                parts["pred"][i] = int(outcome.predicted[k])
                if bool(outcome.fooled[k]):
                    parts["by"][i] = name

    def finish(self, batch: Batch) -> None:
        parts, n = self._parts, self._parts["n"]
        self.kept = Examples(self.eps, batch.x[:n].detach().float().cpu().clone(), batch.y[:n].cpu().clone(),
                             batch.clean_pred[:n].cpu().clone(), parts["adv"], parts["pred"], parts["by"])  # fmt: skip
        self._parts = None
