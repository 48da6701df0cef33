"""APGD-T (Croce and Hein 2020): APGD on the targeted DLR loss, towards each of the top classes."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .. import checks as check
from ._losses import targeted_dlr
from .apgd import APGD
from .base import Call, options_without
from .gradient import RunState
from .progress import Ticker
from .result import AttackResult, Best
from .target_runs import target_runs

_AUTOATTACK_TARGETS = 9


class APGDT(APGD):
    r"""APGD-T: "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", Croce and Hein, ICML 2020, https://arxiv.org/abs/2003.01690.

    Distance: L-inf or L2. APGD (see :class:`APGD`) ascending the targeted DLR loss
    ``(z_t - z_y) / (z_1 - (z_3 + z_4) / 2)``, run towards each of the ``n_target_classes``
    classes the model ranks highest after the true one, each run on the samples not yet fooled.
    Labels are the true classes: an untargeted attack (success means a wrong prediction), so
    there is no ``targeted`` option.

    Arguments (order and defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K >= 4].
        norm ("Linf" | "L2", or "linf" | "l2"): Default: "Linf".
        eps (float or tensor [B]): radius, in pixel units. Default: 8/255.
        steps (int): iterations per run. Default: 10.
        n_restarts (int): runs per target class (``restarts``: the same, give one). Default: 1.
        seed (int or None): seeds the random starts when no `generator` is given. Default: 0.
        eot_iter (int): gradients averaged per step. Default: 1.
        rho (float): the share of rising steps below which the step size halves. Default: 0.75.
        verbose (bool): print the robust accuracy after each run. Default: False.
        n_classes (int or None): the model's classes, torchattacks' way to say
            ``n_target_classes = n_classes - 1``. Default: None (10, as torchattacks, unless
            n_target_classes is given).
        loss (keyword, "dlr"): only the targeted DLR is taken.
        n_target_classes (keyword, int): target classes (AutoAttack's name; give it or
            n_classes). Default: 9.
        target_batch (keyword, int or None): run the target classes side by side, up to this
            many (sample, target class) pairs in one batch, instead of one class after another;
            early stopping drops all of a sample's pairs once one fools the model. Faster where
            most samples withstand every target (AutoAttack's APGD-T, after APGD-CE: the batch
            is larger and each step's overhead is shared), slower where the first target fools
            most; the random starts differ from the one-at-a-time runs'. None: one target class
            at a time on the samples still robust, as the original. Default: None.
        **options: early_stop, lower, upper, mean, std, amp, channels_last, backend, generator,
            model_mode: as for :class:`fastadv.PGD`.

    Shape: images [B, ...] in [lower, upper], float32/float16/bfloat16; labels [B] int64, the
    true classes. Returns images of the same shape and dtype.

    Example:
        >>> attack = fastadv.APGDT(model, norm="Linf", eps=8/255, steps=100, n_restarts=1, n_classes=10)
        >>> adv_images = attack(images, labels)
    """

    supported_options = options_without("targeted")
    unsupported_because = {
        **APGD.unsupported_because,
        "targeted": "APGDT takes the true labels and picks its own targets",
    }

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float | torch.Tensor = 8 / 255,
        steps: int = 10,
        n_restarts: int | None = None,
        seed: int | None = 0,
        eot_iter: int = 1,
        rho: float = 0.75,
        verbose: bool = False,
        n_classes: int | None = None,
        *,
        restarts: int | None = None,
        loss: str = "dlr",
        n_target_classes: int | None = None,
        target_batch: int | None = None,
        **options: Any,
    ):
        if loss != "dlr":
            raise ValueError(f"loss: APGDT ascends the targeted DLR loss only (loss='dlr'), got {loss!r}")
        if n_classes is not None:
            if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
                raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
            n_classes -= 1  # as a number of targets, to compare with n_target_classes
        name, targets = check.aliased("n_target_classes", n_target_classes, "n_classes", n_classes, _AUTOATTACK_TARGETS)
        if not isinstance(targets, int) or isinstance(targets, bool) or targets < 1:
            raise ValueError(f"{name} must be an int >= 1, got {targets!r}")
        self.n_target_classes = targets
        self.target_batch = None if target_batch is None else check.positive_int("target_batch", target_batch)
        self._pairs: tuple[torch.Tensor, int] | None = None  # during a run of pairs: targets, samples
        super().__init__(model, norm, eps, steps, n_restarts, seed, "dlr", eot_iter, rho, verbose, restarts=restarts,
                         **options)  # fmt: skip
        # every target class gets n_restarts runs
        self.restarts = self.n_restarts * self.n_target_classes

    def _run_targets(self, x, y, call, index):
        if self._pairs is not None:  # a run of (sample, target) pairs: the targets are given
            return self._pairs[0]
        # runs 0..n_restarts-1 aim at the best other class, the next n_restarts at the second, ...
        return self._ranked_targets(x, y, call)[:, index // self.n_restarts]

    def _ranked_targets(self, x: torch.Tensor, y: torch.Tensor, call: Call) -> torch.Tensor:
        """int64 [b, n_target_classes]: the classes other than y by clean logit, highest first
        (past the model's classes - 1, the ranking starts again)."""
        with torch.no_grad():
            logits = self._logits(x, call)
        if logits.shape[1] < 4:
            raise ValueError(f"model: APGDT's targeted DLR needs at least 4 classes, got {logits.shape[1]}")
        others = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
        ranks = torch.arange(self.n_target_classes, device=x.device) % (logits.shape[1] - 1)
        return others.sort(dim=1, descending=True).indices[:, ranks]

    # --- target classes side by side (target_batch) --------------------------------------------

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        if self.target_batch is None:
            return super()._run(x, y, call, track)
        ranked = self._ranked_targets(x, y, call)
        best = Best(x, self.targeted)
        self._ticker = Ticker(self.progress_hook, self.n_target_classes * self.n_restarts * self.steps, "steps")

        def survivors() -> torch.Tensor:
            return (~best.success).nonzero().squeeze(1)

        for index, run in enumerate(target_runs(self.n_target_classes, self.n_restarts, self.target_batch, survivors)):
            # (a run of `group` target classes: each of its steps is `group` steps' work)
            self._ticker.run(run.runs_before(self.n_restarts) * self.steps, run.group)
            self._pairs_run(x, y, run.todo, run.owner, ranked[run.owner, run.column], best, call, index)
            self._after_run(index, best)
        return best.result()

    def _pairs_run(self, x: torch.Tensor, y: torch.Tensor, samples: torch.Tensor, owner: torch.Tensor,
                   targets: torch.Tensor, best: Best, call: Call, index: int) -> None:  # fmt: skip
        """One APGD run on the pairs (sample owner[p], target class targets[p]) of `samples`,
        recorded in `best` per sample: a pair that fooled the model, else the pair of highest loss."""
        pairs = dataclasses.replace(RunState(None, call.params, x, y).select(owner, call), idx=None)
        found = Best(pairs.x, self.targeted)
        self._pairs = (targets, samples.numel())
        try:
            self._one_run(pairs, found, call, index)
        finally:
            self._pairs = None
        # rows are rank-major (row p: samples[p % n]); per sample, the first pair that fooled the
        # model, else the one of highest objective
        n = samples.numel()
        key = torch.where(found.success, torch.inf, found.objective.nan_to_num(nan=-torch.inf))
        chosen = key.view(-1, n).argmax(0) * n + torch.arange(n, device=x.device)
        best.add(samples, found.adv.index_select(0, chosen), found.predicted.index_select(0, chosen),
                 found.success.index_select(0, chosen), found.loss.index_select(0, chosen), final=True,
                 confidence=found.confidence.index_select(0, chosen))  # fmt: skip
        best.steps.index_add_(0, owner, found.steps)
        best.non_finite.index_add_(0, owner, found.non_finite)  # (bool: a sum that saturates, an any)

    def _done(self, s, fooled):
        if self._pairs is None:
            return fooled
        n = self._pairs[1]  # (row p of the pairs belongs to sample p % n)
        sample = (torch.arange(fooled.shape[0], device=fooled.device) if s.idx is None else s.idx) % n
        hit = torch.zeros(n, dtype=torch.int64, device=fooled.device).index_add_(0, sample, fooled.long())
        return hit.index_select(0, sample) > 0

    def _objective(self, logits, y, targets):
        return targeted_dlr(logits, y, targets)

    def _recorded_loss(self, logits, y, objective):
        return self._loss(logits, y)  # the untargeted DLR of the true class
