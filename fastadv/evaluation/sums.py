"""What an evaluation counts, as sums over samples: a confusion matrix per (eps, attack), the
worst case, fooled and attacked counts, norm sums and seconds. Sums add up across batches (so a
resumed evaluation gives the same numbers) and across torch.distributed ranks, reduced with one
all_reduce per quantity."""

from __future__ import annotations

import torch

from .. import _distributed
from . import calibration


class Sums:
    """Every per-sample quantity the report needs, summed. Keys: "clean" ([K, K] confusion),
    "worst" (per eps, the confusion of the worst case over all attacks), and per (eps index,
    attack index): "cm" (confusion under the attacks so far with cascade, under this attack
    alone without), "fooled" (correct samples fooled by this attack or, with cascade, an earlier
    one), "attacked", "own_fooled" (samples this attack fooled, of those it attacked),
    "non_finite" (samples whose adversarial candidate had NaN or infinite values: counted as not
    fooled), "linf", "l2" (norm sums over the samples this attack fooled), "seconds"."""

    def __init__(self, n_eps: int, n_attacks: int, classes: int):
        self.t = {
            "clean": torch.zeros(classes, classes, dtype=torch.float64),
            "cm": torch.zeros(n_eps, n_attacks, classes, classes, dtype=torch.float64),
            "worst": torch.zeros(n_eps, classes, classes, dtype=torch.float64),
            "fooled": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "attacked": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "own_fooled": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "non_finite": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "linf": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "l2": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "seconds": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            # the calibration error's bins (calibration.py): per bin, samples, confidence sum, correct count
            "calibration_clean": torch.zeros(3, calibration.BINS, dtype=torch.float64),
            "calibration": torch.zeros(n_eps, n_attacks, 3, calibration.BINS, dtype=torch.float64),
        }

    def reduce(self) -> None:
        """Sums over torch.distributed ranks (seconds: the slowest rank's)."""
        for key, value in self.t.items():
            self.t[key] = _distributed.all_reduce(value, "max" if key == "seconds" else "sum")


def confusion(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """The [classes, classes] confusion matrix (rows: labels, columns: predictions) as float64 counts."""
    index = (labels * classes + predicted).cpu()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes).double()
