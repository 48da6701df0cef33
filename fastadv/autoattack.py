"""AutoAttackLite: AutoAttack's two gradient stages (APGD-CE, then APGD-T on the samples still
robust), with the original's per-stage log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _validate as check
from ._cascade import StageRun, run_cascade
from .attacks import APGD, APGDT


@dataclass(frozen=True)
class Stage:
    """One stage of the ensemble: samples it attacked (those still robust), how many it fooled,
    the robust accuracy over all samples after it, and its wall time in seconds."""

    name: str
    attacked: int
    fooled: int
    robust_accuracy: float
    seconds: float


@dataclass(frozen=True)
class AutoAttackResult:
    """adv: the adversarial images (a robust sample keeps its clean image); robust: bool [N],
    correctly classified and not fooled by any stage; clean_accuracy; stages in order."""

    adv: torch.Tensor
    robust: torch.Tensor
    clean_accuracy: float
    stages: list[Stage] = field(default_factory=list)

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else 0.0


class AutoAttackLite:
    r"""The gradient half of AutoAttack ("Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", Croce and Hein, ICML 2020): APGD-CE on every
    correctly classified sample, then APGD-T (targeted DLR, ``n_target_classes`` targets) on
    those still robust; FAB-T and Square, the standard version's other two stages, are not
    included. Each stage logs as the original does (``apgd-ce - 1/2 - 19 out of 250 successfully
    perturbed``, ``robust accuracy after APGD-CE: 72.00% (total time 2.3 s)``).

    Arguments:
        model (nn.Module or callable): maps images [B, ...] to logits [B, K] (K >= 4).
        norm ("Linf" | "L2"): Default: "Linf".
        eps (float): Default: 8/255.
        steps (int): iterations per APGD run (AutoAttack's standard version: 100). Default: 100.
        n_restarts (int): runs per stage (APGD-T: per target class). Default: 1.
        n_target_classes (int): Default: 9.
        seed (int): seeds both stages' random starts. Default: 0.
        log (callable or None): receives each log line (default: print; None: silent).
        **options: as for :class:`fastadv.APGD` (early_stop, lower, upper, mean, std, amp,
            channels_last, backend, model_mode).

    Example:
        >>> attack = AutoAttackLite(model, norm="Linf", eps=8/255)
        >>> adv_images = attack.run_standard_evaluation(images, labels, bs=250)
    """

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float = 8 / 255,
        steps: int = 100,
        n_restarts: int = 1,
        n_target_classes: int = 9,
        seed: int = 0,
        log: Callable[[str], Any] | None = print,
        **options: Any,
    ):
        if "targeted" in options or "generator" in options:
            raise ValueError("options: AutoAttackLite takes neither targeted nor generator (it is seeded by seed)")
        if log is not None and not callable(log):
            raise TypeError(f"log must be a callable or None, got {type(log).__name__}")
        self.eps = check.number("eps", eps, at_least=0)
        self.norm = norm
        self.log = log
        common = {"norm": norm, "eps": self.eps, "steps": steps, "n_restarts": n_restarts, "seed": seed, **options}
        self.stages = (
            ("apgd-ce", APGD(model, loss="ce", **common)),
            ("apgd-t", APGDT(model, n_target_classes=n_target_classes, **common)),
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.run(images, labels).adv

    def run_standard_evaluation(self, images: torch.Tensor, labels: torch.Tensor, bs: int = 250) -> torch.Tensor:
        """AutoAttack's entry point: the adversarial images, attacked `bs` samples at a time."""
        return self.run(images, labels, batch_size=bs).adv

    def run(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250) -> AutoAttackResult:
        """Runs the stages on images [N, ...] with labels [N] in batches of `batch_size`."""
        batch_size = check.positive_int("batch_size", batch_size)
        first = self.stages[0][1]
        check.images_and_labels(images, labels)
        n = images.shape[0]
        if n == 0:  # (a robust accuracy over no sample would read as 0%)
            raise ValueError("images: an empty batch; AutoAttackLite needs at least one sample")
        self._say(f"using lite version including {', '.join(name for name, _ in self.stages)}.")
        start = time.perf_counter()
        chunks = range(0, n, batch_size)  # (labels checked against the model's classes, as the attacks do)
        robust = torch.cat([first.predict(images[i : i + batch_size], labels[i : i + batch_size]) for i in chunks])
        robust = robust == labels
        clean_accuracy = float(robust.float().mean()) if n else 0.0
        self._say(f"initial accuracy: {clean_accuracy:.2%}")
        adv = images.detach().clone()
        stages: list[Stage] = []
        attacks = dict(self.stages)

        def attack(name: str, index: torch.Tensor) -> torch.Tensor:
            result = attacks[name].run(images[index], labels[index])
            adv[index[result.success]] = result.adv[result.success]
            return result.success

        def chunk_done(name: str, chunk: int, chunks: int, index: torch.Tensor, fooled: torch.Tensor) -> None:
            self._say(f"{name} - {chunk + 1}/{chunks} - {int(fooled.sum())} out of {int(index.numel())} "
                      "successfully perturbed")  # fmt: skip

        def stage_done(name: str, run: StageRun) -> None:
            accuracy = float(robust.float().mean()) if n else 0.0
            seconds = time.perf_counter() - start
            stages.append(Stage(name, int(run.index.numel()), int(run.fooled.sum()), accuracy, seconds))
            self._say(f"robust accuracy after {name.upper()}: {accuracy:.2%} (total time {seconds:.1f} s)")

        run_cascade(list(attacks), robust, attack, batch_size=batch_size, on_chunk=chunk_done, on_stage=stage_done)
        delta = (adv.float() - images.float()).flatten(1)
        size = delta.abs().amax(1) if self.norm.lower() == "linf" else delta.norm(dim=1)
        self._say(
            f"max {self.norm} perturbation: {float(size.max()) if n else 0.0:.5f}, "
            f"nan in tensor: {int(adv.isnan().sum())}, max: {float(adv.max()) if n else 0.0:.5f}, "
            f"min: {float(adv.min()) if n else 0.0:.5f}"
        )
        result = AutoAttackResult(adv, robust, clean_accuracy, stages)
        self._say(f"robust accuracy: {result.robust_accuracy:.2%}")
        return result

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
