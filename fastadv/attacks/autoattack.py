"""AutoAttack (Croce and Hein 2020): its versions' attacks in a cascade, each on the samples still
robust, with the original's per-stage log and sanity checks; AutoAttackLite, its gradient half."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import checks as check
from .._cascade import StageRun, run_cascade
from ..checkpoint import rng_state, set_rng_state
from .apgdt import APGDT
from .base import GRADIENT_OPTIONS, Attack, UnsupportedOption
from .fab import FAB
from .result import confidence_of

# The attacks of each version, in the order they run (the original's `attacks_to_run`).
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
    "lite": ("apgd-ce", "apgd-t"),
}
# FAB-T's (sample, target class) pairs side by side on a CPU: its model passes (a forward and a
# backward, then a forward, per step) cost least per row at a few dozen rows. Digits CNN, 30 steps,
# CPU time: 6 samples one target at a time 1.15 s, 9 targets side by side (54 rows) 0.47 s;
# 10 samples 1.09 s, 40-60 rows 0.70-0.73 s, 90 rows 0.94 s; 45 samples: no gain at 90-225 rows,
# 1.6x slower at 405 (the activations leave the cache).
FAB_T_CPU_PAIRS = 64
STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")  # what version="custom" may run
# Each stage's class and settings (the original's, per version) are the attack catalogue's
# AUTOATTACK_STAGES (fastadv/attacks/catalog.py), with evaluate's attacks in one table.


class AutoAttackWarning(UserWarning):
    """A sanity check of AutoAttack failed: the evaluation may overestimate the model's robustness."""


RANDOMIZED = ("the model's outputs differ between two forward passes on the same images: it seems to be a "
              "randomized defense; use version='rand' (APGD with expectation over transformation)")  # fmt: skip
PROBABILITIES = ("the model's outputs look like probabilities (non-negative, each row summing to 1); "
                 "AutoAttack's losses expect logits, so the evaluation may be unreliable: pass the model "
                 "without its softmax")  # fmt: skip
MASKED = ("the input gradient of the loss is zero or not finite on most samples: gradient masking suspected, "
          "the gradient-based stages may overestimate the robustness (Square, which reads only the outputs, "
          "is in the standard version)")  # fmt: skip


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
    correctly classified and not fooled by any stage; clean_accuracy; stages in order;
    predicted: int64 [N], the model's class for adv; non_finite: bool [N], some stage produced
    a non-finite candidate for the sample (never counted as fooling); confidence: float32 [N],
    the softmax probability of `predicted`, from the forward pass that gave it (the clean pass,
    or the stage's pass on adv)."""

    adv: torch.Tensor
    robust: torch.Tensor
    clean_accuracy: float
    stages: list[Stage] = field(default_factory=list)
    predicted: torch.Tensor | None = None
    non_finite: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else 0.0

    @property
    def success(self) -> torch.Tensor:
        """bool [N]: the model's class for adv is wrong (misclassified clean, or fooled), as
        :class:`fastadv.AttackResult` says it."""
        return ~self.robust


@dataclass(frozen=True)
class AutoAttackState:
    """Where a run of :meth:`AutoAttack.run` stands after one of its stages: enough to continue it
    (``run(images, labels, resume=state)``) as if it had not stopped.

    names: the run's stages in order; next_stage: how many of them have finished; robust, adv,
    predicted, non_finite: as in :class:`AutoAttackResult`, after the finished stages; fooled:
    bool [N], fooled by a finished stage (the samples whose adv is not the clean image);
    clean_accuracy; stages: the finished stages' rows; seconds: the run's time so far; rng: the
    random-number states (fastadv.checkpoint.rng_state) at the stage's end, which a run with
    seed=None draws its next stages from; confidence: as in :class:`AutoAttackResult` (None in a
    state saved before it was kept: a resumed run then reports none).
    """

    names: tuple[str, ...]
    next_stage: int
    robust: torch.Tensor
    adv: torch.Tensor
    predicted: torch.Tensor
    non_finite: torch.Tensor
    fooled: torch.Tensor
    clean_accuracy: float
    stages: tuple[Stage, ...]
    seconds: float
    rng: dict
    confidence: torch.Tensor | None = None

    @property
    def stage(self) -> str:
        """The name of the last finished stage."""
        return self.names[self.next_stage - 1]

    def to_dict(self) -> dict:
        """The state as tensors, numbers and strings (torch.save, torch.load(weights_only=True));
        the adversarial images of the fooled samples only (the others are the clean ones)."""
        return {"names": list(self.names), "next_stage": self.next_stage, "robust": self.robust.cpu(),
                "fooled": self.fooled.cpu(), "adv": self.adv[self.fooled].cpu(), "predicted": self.predicted.cpu(),
                "non_finite": self.non_finite.cpu(), "clean_accuracy": self.clean_accuracy,
                "stages": [vars(stage) for stage in self.stages], "seconds": self.seconds, "rng": self.rng,
                "confidence": None if self.confidence is None else self.confidence.cpu()}  # fmt: skip

    @classmethod
    def from_dict(cls, saved: dict, images: torch.Tensor) -> AutoAttackState:
        """The state `to_dict` gave, for a run on `images` (the clean images it was saved for)."""
        device = images.device
        fooled = saved["fooled"].to(device)
        if fooled.shape != images.shape[:1] or saved["adv"].shape[1:] != images.shape[1:]:
            raise ValueError(f"resume: a state of {fooled.numel()} samples of shape {tuple(saved['adv'].shape[1:])}, "
                             f"not of these images {tuple(images.shape)}")  # fmt: skip
        adv = images.detach().clone()
        adv[fooled] = saved["adv"].to(device=device, dtype=images.dtype)
        return cls(tuple(saved["names"]), int(saved["next_stage"]), saved["robust"].to(device), adv,
                   saved["predicted"].to(device), saved["non_finite"].to(device), fooled,
                   float(saved["clean_accuracy"]), tuple(Stage(**row) for row in saved["stages"]),
                   float(saved["seconds"]), saved["rng"],
                   None if saved.get("confidence") is None else saved["confidence"].to(device))  # fmt: skip


class AutoAttack:
    r"""AutoAttack: "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", Croce and Hein, ICML 2020, https://arxiv.org/abs/2003.01690.

    Runs the attacks of a version in order, each on the samples no earlier one fooled (the
    first on the correctly classified ones), and reports the robust accuracy after each, with the
    original's log (``robust accuracy after APGD-CE: 72.00% (total time 2.3 s)``). Versions, with
    the original's settings (APGD and FAB: ``steps`` = 100 iterations; Square: 5000 queries,
    p_init 0.8, the schedule not rescaled):

    - "standard": APGD-CE, APGD-T (``n_classes`` - 1 = 9 target classes), FAB-T (9 targets),
      Square; one run each (per target class for the targeted ones).
    - "plus": APGD-CE and APGD-DLR with 5 restarts, FAB (untargeted) with 5, Square, APGD-T, FAB-T.
    - "rand": APGD-CE and APGD-DLR, gradients averaged over 20 draws (EOT), for randomized models.
    - "custom": the names in ``attacks_to_run`` (among apgd-ce, apgd-dlr, apgd-t, fab, fab-t,
      square), set as the original constructs them (APGD-CE/-DLR and FAB with 5 restarts).
    - "lite": APGD-CE and APGD-T (:class:`AutoAttackLite`).

    Before the stages, sanity checks on the first batch warn (:class:`AutoAttackWarning`) when the
    model looks randomized (two forward passes differ; not for "rand"), returns probabilities
    rather than logits, has a zero or non-finite input gradient on most samples (gradient
    masking), has fewer classes than the targeted stages aim at; and after them, when Square
    fooled samples the gradient stages could not (more than 0.2% of all).

    Arguments (positional order as torchattacks'):
        model (nn.Module or callable): maps images [N, C, H, W] to logits [N, K] (K >= 4 for the
            targeted and DLR stages).
        norm ("Linf" | "L2"): Default: "Linf".
        eps (float): Default: 8/255.
        version ("standard" | "plus" | "rand" | "custom" | "lite"): Default: "standard".
        n_classes (int): the model's classes; the targeted stages aim at n_classes - 1. Default: 10.
        seed (int or None): seeds every stage's random starts (None: the global generator). Default: 0.
        verbose (bool): send the log lines to `log`. Default: False.
        attacks_to_run (keyword, list of names): the stages of version="custom" (only then).
        steps (keyword, int): iterations of APGD and FAB. Default: 100.
        n_queries (keyword, int): Square's queries per sample. Default: 5000.
        log (keyword, callable): receives each log line when verbose. Default: print.
        **options: for the stages: lower, upper, mean, std, amp, channels_last, backend,
            model_mode, and early_stop for the APGD stages (default True here: a fooled sample
            leaves the batch, the cascade's outcome is the same). channels_last defaults to
            "auto" here: on a CPU the model's nn.Conv2d weights are held in channels_last while
            the stages run (given back as they were), where oneDNN's convolutions run 1.8x
            (forward + backward) to 2.7x (forward) faster on the digits CNN; the logits differ
            from the contiguous layout's in the last bits, as on another CPU. False: the
            model as given.

    APGD-T attacks its samples' target classes side by side, up to ``batch_size`` (sample,
    target class) pairs in one batch (APGDT's ``target_batch``), instead of one class after
    another: each pair gets the original's budget, and the samples still robust after APGD-CE,
    which withstand most targets, take fewer and larger batches (the memory of a batch of
    ``batch_size`` samples at most). FAB-T does the same (FAB's ``target_batch``) up to
    ``batch_size`` pairs on a GPU and 64 on a CPU, where its passes cost least per row at a
    few dozen rows: the few samples still robust after the APGD stages (6 of 64 digits on the
    digits CNN) take one batch of all 9 targets instead of 9 batches of 6 rows. Each FAB-T run
    starts at the image, so the result is the one-target-at-a-time order's (a target counts
    for a sample only while no earlier one fooled it within eps).

    The stages are in ``attack.stages`` as (name, attack) pairs. Call ``attack(images, labels)``
    or ``attack.run_standard_evaluation(images, labels, bs=250)`` for the adversarial images,
    ``attack.run(images, labels, batch_size=250)`` for an :class:`AutoAttackResult`; ``run``
    also reports each stage's progress and end (to show it, or to save an
    :class:`AutoAttackState`), and continues a run from such a state.

    Example:
        >>> attack = fastadv.AutoAttack(model, norm="Linf", eps=8/255, version="standard", verbose=True)
        >>> adv_images = attack.run_standard_evaluation(images, labels, bs=250)
    """

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float = 8 / 255,
        version: str = "standard",
        n_classes: int = 10,
        seed: int | None = 0,
        verbose: bool = False,
        *,
        attacks_to_run: Sequence[str] | None = None,
        steps: int = 100,
        n_queries: int = 5000,
        log: Callable[[str], Any] | None = print,
        **options: Any,
    ):
        version = check.choice("version", version, (*VERSIONS, "custom"))
        if version == "custom":
            names = check.choices("attacks_to_run", attacks_to_run, STAGES)
            if len(set(names)) != len(names):
                raise ValueError(f"attacks_to_run: each attack at most once, got {names}")
        elif attacks_to_run:
            raise ValueError(f"attacks_to_run: only with version='custom'; version={version!r} runs "
                             f"{', '.join(VERSIONS[version])}")  # fmt: skip
        else:
            names = list(VERSIONS[version])
        if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        self.n_classes = n_classes
        self.verbose = check.flag("verbose", verbose)
        log = log if verbose else None
        if "targeted" in options or "generator" in options:
            raise ValueError(f"options: {type(self).__name__} takes neither targeted nor generator (it is seeded "
                             "by seed)")  # fmt: skip
        if log is not None and not callable(log):
            raise TypeError(f"log must be a callable or None, got {type(log).__name__}")
        self.eps = check.number("eps", eps, at_least=0)
        self.norm = {"linf": "Linf", "l2": "L2"}[check.norm(norm)]
        self.version, self.seed, self.log = version, seed, log
        self.n_target_classes = n_classes - 1
        check.positive_int("steps", steps)
        check.positive_int("n_queries", n_queries)
        from .catalog import AUTOATTACK_STAGES  # (the catalogue lists AutoAttack too: imported once it is defined)

        options = {"channels_last": "auto", **options}
        arguments = {"norm": self.norm, "eps": self.eps, "seed": seed, "version": version, "steps": steps,
                     "n_queries": n_queries, "n_classes": n_classes, "options": options}  # fmt: skip
        try:
            self.stages = [(name, AUTOATTACK_STAGES[name].build(model, overrides=self._stage_overrides(name),
                                                                **arguments)) for name in names]  # fmt: skip
        except UnsupportedOption as error:  # the stage's class named it: say it of this class, and why
            raise _unsupported_by_stage(type(self).__name__, error) from None

    def _stage_overrides(self, name: str) -> dict:
        """Settings of stage `name` that replace the catalogue's (none here; AutoAttackLite's restarts)."""
        return {}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.run(images, labels).adv

    def run_standard_evaluation(self, images: torch.Tensor, labels: torch.Tensor, bs: int = 250) -> torch.Tensor:
        """AutoAttack's entry point: the adversarial images, attacked `bs` samples at a time."""
        return self.run(images, labels, batch_size=bs).adv

    def batch_targets(self, batch_size: int, device: torch.device) -> None:
        """Sets the targeted stages' (sample, target class) pairs per batch for batches of
        `batch_size` samples on `device`, as :meth:`run` does: APGD-T's ``target_batch`` to
        batch_size, FAB-T's to batch_size on a GPU and at most FAB_T_CPU_PAIRS on a CPU."""
        for _, stage in self.stages:
            if isinstance(stage, APGDT):
                stage.target_batch = batch_size
            elif isinstance(stage, FAB) and stage.multi_targeted:
                on_cpu = torch.device(device).type == "cpu"
                stage.target_batch = min(batch_size, FAB_T_CPU_PAIRS) if on_cpu else batch_size

    def run(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 250,
        *,
        on_progress: Callable[[str, int, int], Any] | None = None,
        on_stage_end: Callable[[AutoAttackState], Any] | None = None,
        resume: AutoAttackState | None = None,
        on_stage_progress: Callable[[str, int, int, str], Any] | None = None,
    ) -> AutoAttackResult:
        """Runs the stages on images [N, ...] with labels [N] in batches of `batch_size`.

        on_progress(stage, done, total): when a stage starts attacking (done = 0) and after each
        of its batches: `done` of the `total` samples it attacks (a stage with none left to
        attack is not reported). on_stage_progress(stage, done, total, unit): from inside a
        stage's batch, how far its loop is: `done` of `total` gradient steps over its runs
        (APGD's restarts, APGD-T's and FAB-T's target classes) or Square's queries (`unit`:
        "steps" or "queries"); at most every `fastadv.attacks.progress.INTERVAL` seconds (a
        clock read per step, no device sync) and when the batch's work is done.
        on_stage_end(state): after each stage, an :class:`AutoAttackState` (tensors of its own,
        on the images' device); an exception it raises stops the run. resume: a state that
        on_stage_end gave for these images and labels and an AutoAttack with the same settings
        and seed: the finished stages are not run again, and the result is the one the whole run
        gives (the sanity checks, made on the first run, are not made again).
        """
        batch_size = check.positive_int("batch_size", batch_size)
        first = self.stages[0][1]
        check.images_and_labels(images, labels)
        n = images.shape[0]
        if n == 0:  # (a robust accuracy over no sample would read as 0%)
            raise ValueError(f"images: an empty batch; {type(self).__name__} needs at least one sample")
        names = [name for name, _ in self.stages]
        self.batch_targets(batch_size, images.device)
        self._say(f"using {self.version} version including {', '.join(names)}.")
        if resume is None:
            start = time.perf_counter()
            chunks = range(0, n, batch_size)  # (labels checked against the model's classes, as the attacks do)
            # (the clean logits once: the classes and their softmax probabilities)
            logits = [first.logits(images[i : i + batch_size], labels[i : i + batch_size]) for i in chunks]
            predicted = torch.cat([z.argmax(1) for z in logits])
            confidence = torch.cat([confidence_of(z, z.argmax(1)) for z in logits])
            del logits
            self._sanity_checks(first, images[:batch_size], labels[:batch_size])
            robust = predicted == labels
            clean_accuracy = float(robust.float().mean())
            adv = images.detach().clone()
            non_finite, fooled_any = torch.zeros_like(robust), torch.zeros_like(robust)
            stages: list[Stage] = []
            done = 0
        else:
            self._check_resume(resume, names, n)
            start = time.perf_counter() - resume.seconds  # ("total time" counts the time before the stop)
            robust, adv, predicted = resume.robust.clone(), resume.adv.clone(), resume.predicted.clone()
            confidence = None if resume.confidence is None else resume.confidence.clone()
            non_finite, fooled_any = resume.non_finite.clone(), resume.fooled.clone()
            clean_accuracy, stages, done = resume.clean_accuracy, list(resume.stages), resume.next_stage
            set_rng_state(resume.rng)  # what a stage seeded by the global generator draws next
        self._say(f"initial accuracy: {clean_accuracy:.2%}")
        if done:
            self._say(f"resumed after {names[done - 1].upper()}: robust accuracy {float(robust.float().mean()):.2%}")
        attacks = dict(self.stages)
        running = {"name": None, "done": 0, "total": 0}  # the stage on_progress follows

        def attack(name: str, index: torch.Tensor) -> torch.Tensor:
            if on_progress is not None and running["name"] != name:
                running.update(name=name, done=0, total=int(robust.sum()))
                on_progress(name, 0, running["total"])
            result = attacks[name].run(images[index], labels[index])
            fooled = result.success
            adv[index[fooled]] = result.adv[fooled].detach()
            fooled_any[index[fooled]] = True
            classes = result.predicted if result.predicted is not None else first.predict(result.adv)
            predicted[index[fooled]] = classes[fooled]
            if confidence is not None:
                confidence[index[fooled]] = result.confidence[fooled]
            if result.non_finite is not None:
                non_finite[index] |= result.non_finite
            return fooled

        def chunk_done(name: str, chunk: int, chunks: int, index: torch.Tensor, fooled: torch.Tensor) -> None:
            self._say(f"{name} - {chunk + 1}/{chunks} - {int(fooled.sum())} out of {int(index.numel())} "
                      "successfully perturbed")  # fmt: skip
            if on_progress is not None:
                running["done"] += int(index.numel())
                on_progress(name, running["done"], running["total"])

        def stage_done(name: str, run: StageRun) -> None:
            accuracy = float(robust.float().mean())
            seconds = time.perf_counter() - start
            stages.append(Stage(name, int(run.index.numel()), int(run.fooled.sum()), accuracy, seconds))
            self._say(f"robust accuracy after {name.upper()}: {accuracy:.2%} (total time {seconds:.1f} s)")
            if on_stage_end is not None:
                on_stage_end(AutoAttackState(tuple(names), names.index(name) + 1, robust.clone(), adv.clone(),
                                             predicted.clone(), non_finite.clone(), fooled_any.clone(), clean_accuracy,
                                             tuple(stages), seconds, rng_state(),
                                             None if confidence is None else confidence.clone()))  # fmt: skip

        for name, stage in self.stages:  # (the hooks are the run's: removed when it returns or raises)
            stage.progress_hook = None if on_stage_progress is None else functools.partial(on_stage_progress, name)
        try:
            run_cascade(names[done:], robust, attack, batch_size=batch_size, on_chunk=chunk_done, on_stage=stage_done)
        finally:
            for _, stage in self.stages:
                stage.progress_hook = None
        _check_square(stages, n)
        delta = (adv.float() - images.float()).flatten(1)
        size = delta.abs().amax(1) if self.norm == "Linf" else delta.norm(dim=1)
        self._say(f"max {self.norm} perturbation: {float(size.max()):.5f}, nan in tensor: {int(adv.isnan().sum())}, "
                  f"max: {float(adv.max()):.5f}, min: {float(adv.min()):.5f}")  # fmt: skip
        result = AutoAttackResult(adv, robust, clean_accuracy, stages, predicted, non_finite, confidence)
        self._say(f"robust accuracy: {result.robust_accuracy:.2%}")
        return result

    @staticmethod
    def _check_resume(state: AutoAttackState, names: list[str], n: int) -> None:
        if not isinstance(state, AutoAttackState):
            raise TypeError(f"resume must be an AutoAttackState, got {type(state).__name__}")
        if list(state.names) != names:
            raise ValueError(f"resume: a state of the stages {', '.join(state.names)}, not of {', '.join(names)}")
        if state.robust.shape != (n,) or not 1 <= state.next_stage <= len(names):
            raise ValueError(f"resume: a state of {state.robust.numel()} samples after {state.next_stage} stages, not "
                             f"of these {n} samples")  # fmt: skip

    def _sanity_checks(self, attack: Attack, images: torch.Tensor, labels: torch.Tensor) -> None:
        """The original's checks of the defense on one batch, as warnings; the model is seen as
        the stages see it (through the first one: mean/std, amp, mode) and left as it was."""
        # (through the stage's public view of the model: the same normalization, autocast and mode)
        first, second = attack.logits(images, labels), attack.logits(images, labels)
        grad = attack.input_gradient(images, labels, "ce")
        if self.version != "rand" and _differ(first, second):
            warnings.warn(RANDOMIZED, AutoAttackWarning, stacklevel=3)
        if (
            float(first.max()) < 1 + 1e-5
            and float(first.min()) > -1e-5
            and bool(((first.sum(1) - 1).abs() < 1e-5).all())
        ):
            warnings.warn(PROBABILITIES, AutoAttackWarning, stacklevel=3)
        if grad is None or float(_masked(grad).float().mean()) > 0.5:
            warnings.warn(MASKED, AutoAttackWarning, stacklevel=3)
        if first.shape[1] < 4 and any(isinstance(stage, APGDT) for _, stage in self.stages):
            # found here, before any stage runs: APGD-T would fail only once samples reach it
            raise ValueError(f"model: AutoAttack's APGD-T stage (targeted DLR loss) needs at least 4 classes, the "
                             f"model has {first.shape[1]}; use version='custom' with attacks_to_run without "
                             "'apgd-t'")  # fmt: skip
        targeted = [name.upper() for name, _ in self.stages if name in ("apgd-t", "fab-t")]
        if targeted and self.n_target_classes > first.shape[1] - 1:
            verb = "aim" if len(targeted) > 1 else "aims"
            warnings.warn(f"{' and '.join(targeted)} {verb} at {self.n_target_classes} target classes but the model "
                          f"has {first.shape[1]} outputs ({first.shape[1] - 1} possible targets): set n_classes="
                          f"{first.shape[1]}", AutoAttackWarning, stacklevel=3)  # fmt: skip

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


class AutoAttackLite(AutoAttack):
    r"""``AutoAttack(..., version="lite")`` with its own knobs: APGD-CE on every correctly
    classified sample, then APGD-T (targeted DLR, ``n_target_classes`` targets) on those still
    robust, logged as the original does (``apgd-ce - 1/2 - 19 out of 250 successfully
    perturbed``, ``robust accuracy after APGD-CE: 72.00% (total time 2.3 s)``). An AutoAttack
    of version "lite" in every respect (built by AutoAttack's constructor), whose ``n_restarts``
    replaces the catalogue's restarts of both stages.

    Arguments:
        model (nn.Module or callable): maps images [B, ...] to logits [B, K] (K >= 4).
        norm ("Linf" | "L2"): Default: "Linf".
        eps (float): Default: 8/255.
        steps (int): iterations per APGD run (AutoAttack's standard version: 100). Default: 100.
        n_restarts (int): runs per stage (APGD-T: per target class). Default: 1.
        n_target_classes (int): Default: 9.
        seed (int): seeds both stages' random starts. Default: 0.
        log (callable or None): receives each log line (default: print; None: silent).
        **options: as for :class:`AutoAttack`.

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
        self.n_restarts = check.positive_int("n_restarts", n_restarts)
        targets = check.positive_int("n_target_classes", n_target_classes)
        super().__init__(model, norm, eps, "lite", targets + 1, seed, log is not None, steps=steps, log=log, **options)

    def _stage_overrides(self, name: str) -> dict:
        return {"n_restarts": self.n_restarts}  # (both stages, APGD-CE and APGD-T)


def _unsupported_by_stage(name: str, error: UnsupportedOption) -> UnsupportedOption:
    """`error` (a stage refused an option) said of AutoAttack: the option, why, and the options
    every stage takes."""
    stage = error.attack
    if stage is None:
        return error
    reason = stage.unsupported_because.get(error.option)
    options = [o for o in stage.supported_options if o not in ("targeted", "generator")]  # (seeded by seed)
    # an option of other attacks: which stage refuses it, and why; any other keyword: no stage to name
    why = f" (its {stage.__name__} stage does not{f': {reason}' if reason else ''})"
    why *= error.option in GRADIENT_OPTIONS
    return UnsupportedOption(
        f"{error.option}: {name} does not take this option{why}; its options are {', '.join(options)}",
        error.option,
        stage,
    )


def _differ(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Two outputs of the same images differ: another class somewhere, or directions (rows
    scaled to unit norm) more than 1e-4 apart, as the original's check."""
    if not torch.equal(first.argmax(1), second.argmax(1)):
        return True
    unit = [t / (t.norm(dim=1, keepdim=True) + 1e-10) for t in (first, second)]
    return float((unit[0] - unit[1]).norm(dim=1).max()) > 1e-4


def _masked(grad: torch.Tensor) -> torch.Tensor:
    """bool [B]: the sample's gradient is all zero or has a non-finite entry."""
    flat = grad.flatten(1)
    return (flat == 0).all(1) | ~flat.isfinite().all(1)


def _check_square(stages: list[Stage], n: int) -> None:
    """The original's last check: Square, which reads only the outputs, fooled more than 0.2% of
    all samples after gradient stages: their evaluation is unreliable."""
    for index, stage in enumerate(stages):
        if stage.name == "square" and index > 0 and stage.fooled > 0.002 * n:
            warnings.warn(f"Square fooled {stage.fooled / n:.2%} of the samples after the gradient-based stages "
                          "left them robust: their evaluation may be unreliable (gradient masking?); consider "
                          "Square with more queries and restarts, or an adaptive attack", AutoAttackWarning,
                          stacklevel=4)  # fmt: skip
