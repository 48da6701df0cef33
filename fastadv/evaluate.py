"""Robustness evaluation: several attacks at several eps, one report.

For each eps the attacks run in order, as AutoAttack does: the first on every correctly
classified sample, each later one only on the samples still robust (``cascade=False`` attacks
all of them with each). A sample is robust at an eps only if it survives every attack (the worst
case). Everything reported is a sum over samples (counts, a confusion matrix, norm sums), so
batches add up, an evaluation resumes from a state file with identical numbers, and ranks of
torch.distributed reduce with one all_reduce. Each batch's random starts come from a generator
seeded by (seed, batch index, attack, eps), so results do not depend on how batches are spread.

With ``adaptive=True`` the evaluation runs twice, as a defence must be judged: with the attacks as
given, then with the adaptive ones (BPDA through input transformations, EOT over random draws,
the margin-loss PGD added, see `adaptive_attacks`), and the report sets the two side by side
(`fastadv.defenses.report`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import os
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import _distributed
from . import _validate as check
from ._cascade import StageRun, run_cascade
from ._version import __version__
from .attacks.autoattack import AutoAttack, AutoAttackLite, AutoAttackResult, Stage
from .attacks.catalog import (
    ATTACKS,
    MINIMAL_NORM,
    AttackEntry,
    adaptive_attacks,
    attack_options,
    describe_attacks,
)
from .attacks.model_mode import attack_mode
from .checkpoint import fingerprint, save_atomic
from .checkpoint import load as load_checkpoint
from .data import BatchStream, Selection, Source, TensorSource, as_selection
from .data import class_space as class_spaces
from .data.loader import first_images, workers_for
from .defenses.report import compare
from .eval_stages import BatchStages
from .evaluation import calibration

__all__ = ["ATTACKS", "AttackEntry", "AutoAttack", "AutoAttackLite", "AutoAttackResult", "Stage", "describe_attacks",
           "evaluate", "format_report", "robust_accuracy"]  # fmt: skip


class _Sums:
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
            # calibration (issue 28): per confidence bin, samples, confidence sum, correct count
            "calibration_clean": torch.zeros(3, calibration.BINS, dtype=torch.float64),
            "calibration": torch.zeros(n_eps, n_attacks, 3, calibration.BINS, dtype=torch.float64),
        }

    def reduce(self) -> None:
        """Sums over torch.distributed ranks (seconds: the slowest rank's)."""
        for key, value in self.t.items():
            self.t[key] = _distributed.all_reduce(value, "max" if key == "seconds" else "sum")


def _confusion(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    index = (labels * classes + predicted).cpu()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes).double()


def _macro_scores(cm: torch.Tensor) -> tuple[float, float, float]:
    """Macro precision, recall and F1 from a [K, K] confusion matrix (rows: true labels); classes
    with no prediction (or no sample) count as 0 for precision (recall)."""
    tp = cm.diag()
    precision = torch.where(cm.sum(0) > 0, tp / cm.sum(0).clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(cm.sum(1) > 0, tp / cm.sum(1).clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0 * tp)
    present = cm.sum(1) > 0
    return tuple(float(v[present].mean()) for v in (precision, recall, f1))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class _Job:
    """What every batch of one evaluation shares: the model, the attacks (names of ATTACKS) and
    eps, their settings, the number of classes and the attacks' options (amp, channels_last,
    backend)."""

    model: torch.nn.Module
    attacks: list[str]
    eps: list[float]
    steps: int
    cascade: bool
    seed: int
    classes: int
    options: dict
    keeper: _ExampleKeeper | None = None


@dataclass(frozen=True)
class Examples:
    """The first samples of an evaluation as it attacked them, for a picture (fastadv.plots.
    plot_examples) without attacking again: at eps `eps` (the largest), the clean images and
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


class _ExampleKeeper:
    """Keeps `count` samples of the first batch this process evaluates, at eps index `eps_index`
    (copies on the CPU: nothing of the batch is held after it)."""

    def __init__(self, count: int, eps_index: int, eps: float):
        self.count, self.eps_index, self.eps = count, eps_index, eps
        self.batch_index: int | None = None
        self.kept: Examples | None = None
        self._parts: dict | None = None

    def start(self, batch: _Batch, e_index: int) -> bool:
        """Whether this (batch, eps) is the one kept; if so, starts it from the clean images."""
        if e_index != self.eps_index or self.batch_index not in (None, batch.index) or self.kept is not None:
            return False
        self.batch_index, n = batch.index, min(self.count, batch.x.shape[0])
        self._parts = {"adv": batch.x[:n].detach().float().cpu().clone(), "pred": batch.clean_pred[:n].cpu().clone(),
                       "by": [None] * n, "n": n}  # fmt: skip
        return True

    def add(self, name: str, index: torch.Tensor, outcome: _Outcome) -> None:
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

    def finish(self, batch: _Batch) -> None:
        parts, n = self._parts, self._parts["n"]
        self.kept = Examples(self.eps, batch.x[:n].detach().float().cpu().clone(), batch.y[:n].cpu().clone(),
                             batch.clean_pred[:n].cpu().clone(), parts["adv"], parts["pred"], parts["by"])  # fmt: skip
        self._parts = None


@dataclass(frozen=True)
class _Batch:
    """One batch: images, labels, its index among the evaluation's batches (it seeds the
    attacks), and the model's clean predictions."""

    x: torch.Tensor
    y: torch.Tensor
    index: int
    clean_pred: torch.Tensor
    clean_confidence: torch.Tensor | None = None  # the softmax probability of clean_pred (calibration)


@dataclass(frozen=True)
class _Outcome:
    """One attack on some samples of a batch: which it fooled (bool over them), the predictions
    on their adversarial images (None when no attack ran), the sums of the L-inf and L2
    perturbation norms of those it fooled, the attack's seconds, and how many of them had a
    non-finite candidate."""

    fooled: torch.Tensor
    predicted: torch.Tensor | None
    norms: tuple[float, float]
    seconds: float
    non_finite: int = 0
    adv: torch.Tensor | None = None  # the adversarial images (a budget-exceeding minimal one: the clean image)
    confidence: torch.Tensor | None = None  # the softmax probability of `predicted` (calibration)


_NOTHING = _Outcome(torch.zeros(0, dtype=torch.bool), None, (0.0, 0.0), 0.0)  # no sample to attack


def within_budget(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """bool [B]: the L2 distance of adv from x is within eps (up to float32 rounding): where a
    minimal-norm attack (MINIMAL_NORM) fools the model within the budget eps."""
    return (adv.float() - x.float()).flatten(1).norm(dim=1) <= eps * (1 + 1e-6)


def _attack_batch(job: _Job, batch: _Batch, targets: torch.Tensor, attack_index: int, eps_index: int,
                  stages: BatchStages | None = None) -> _Outcome:  # fmt: skip
    """Runs attack `attack_index` at eps `eps_index` on the samples `targets` (indices) of the
    batch, seeded by (seed, batch index, attack index, eps index); with `stages`, records the
    outcome there, or takes it from there when a resumed evaluation's record holds it."""
    key = f"{eps_index}/{attack_index}"
    if stages is not None and (saved := stages.finished(key)) is not None:
        return _Outcome(saved["fooled"].to(targets.device), None if saved["predicted"] is None else
                        saved["predicted"].to(targets.device), tuple(saved["norms"]), saved["seconds"],
                        saved["non_finite"], confidence=saved.get("confidence"))  # fmt: skip
    outcome = _run_attack(job, batch, targets, attack_index, eps_index, stages)
    if stages is not None:
        stages.done(key, {"fooled": outcome.fooled.cpu(), "norms": list(outcome.norms), "seconds": outcome.seconds,
                          "predicted": None if outcome.predicted is None else outcome.predicted.cpu(),
                          "non_finite": outcome.non_finite,
                          "confidence": None if outcome.confidence is None else outcome.confidence.cpu()})  # fmt: skip
    return outcome


def _run_attack(job: _Job, batch: _Batch, targets: torch.Tensor, attack_index: int, eps_index: int,
                stages: BatchStages | None) -> _Outcome:  # fmt: skip
    x, y = batch.x, batch.y
    eps, attack_name = job.eps[eps_index], job.attacks[attack_index]
    if eps == 0:
        return _Outcome(torch.zeros_like(targets, dtype=torch.bool), None, (0.0, 0.0), 0.0)
    generator = torch.Generator(device=x.device).manual_seed(
        hash((job.seed, batch.index, attack_index, eps_index)) % (2**63)
    )
    options = attack_options(attack_name, job.options)
    staged = attack_name == "autoattack" and stages is not None
    if staged and stages.show:
        options.update(verbose=True, log=stages.write)
    attack = ATTACKS[attack_name].build(job.model, eps, job.steps, generator, **options)
    # the attacked samples are copied once (a batch-sized tensor each copy), and the norms are
    # reduced without batch-sized temporaries: this is the evaluation's peak memory
    x_t, y_t = x[targets], y[targets]
    start = time.perf_counter()
    with contextlib.ExitStack() as scope:
        if staged:  # its stages shown and saved; resumed from the last one saved
            title = f"autoattack at eps {eps:g} on batch {batch.index + 1}: {targets.numel()} samples"
            hooks = scope.enter_context(stages.autoattack(f"{eps_index}/{attack_index}", targets, x_t, title))
            result = attack.run(x_t, y_t, **hooks)
            start -= hooks["resume"].seconds if "resume" in hooks else 0.0  # the time before the stop counts
        else:
            result = attack.run(x_t, y_t)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - start
    adv = result.adv
    delta = (adv.float() - x_t.float()).flatten(1)
    success, predicted = result.success, result.predicted  # recorded by the attack: no second forward
    if attack_name in MINIMAL_NORM:  # beyond the budget the sample keeps its clean (correct) class
        within = within_budget(adv, x_t, eps)
        success, predicted = success & within, torch.where(within, predicted, y_t)
        adv = torch.where(within.view(-1, *([1] * (adv.dim() - 1))), adv, x_t)
    # over the samples fooled only: a failure's image (the clean one for AutoAttack, the ball's
    # edge for PGD) says nothing of the perturbation that fools
    delta = delta[success]
    norms = (float(torch.linalg.vector_norm(delta, float("inf"), dim=1).sum()),
             float(torch.linalg.vector_norm(delta, dim=1).sum()))  # fmt: skip
    # the attacks never return a non-finite image (they keep the clean one: not fooled)
    non_finite = 0 if result.non_finite is None else int(result.non_finite.sum())
    with torch.no_grad():  # the confidence of the prediction that counts, for the calibration error
        confidence = calibration.confidence_of(job.model(adv), predicted) if adv.shape[0] else None
    return _Outcome(success, predicted, norms, seconds, non_finite, adv if job.keeper is not None else None,
                    confidence)  # fmt: skip


def evaluate(
    model: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor] | Source | Selection,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    eps: Sequence[float] = (0.025, 0.05, 0.1, 0.15),
    *,
    steps: int = 20,
    batch_size: int = 256,
    cascade: bool = True,
    seed: int = 0,
    amp: torch.dtype | str | None = None,
    channels_last: bool = False,
    backend: str = "auto",
    adaptive: bool = False,
    eot_samples: int = 1,
    state_path: str | None = None,
    distributed: bool | None = None,
    progress: bool = True,
    workers: int | None = None,
    examples: int = 0,
    class_map=None,
    all_classes: bool = False,
) -> dict:
    """Evaluates `model` on `data` = (images [N, C, H, W] in [0, 1], labels [N]), or a streamed
    data set of fastadv.data (a Source, or a Selection of one: see fastadv.datasets.open_data and
    fastadv.data.select), against `attacks` (names of ATTACKS; iterative ones take `steps`,
    "square" and "autoattack" keep AutoAttack's budgets) at every `eps`, and returns the report (a
    JSON-ready dict; see :func:`format_report`). The model runs in eval mode and is given back
    as it was: every module's own mode, parameters' requires_grad and buffers.

    state_path: a file updated atomically after every batch, and after every stage of
    "autoattack"; an evaluation started again with the same arguments continues after the last
    finished batch, or AutoAttack's last finished stage, and gives the same report.
    progress: a progress bar over the batches and, for "autoattack", its log (the original's
    lines) and a bar per stage.
    distributed: shard batches over torch.distributed ranks and reduce (default: when a process
    group is initialised). Every rank returns the full report.
    workers: processes that read a streamed data set's batches (default: one per CPU, at most
    8; 0: read in this process). The report's "data_loading" says how long the evaluation
    waited for data; "skipped_images" lists the images a Source with skip_bad left out.
    examples: keep this many samples of the first batch as they were attacked at the largest
    eps, in ``report["examples"]`` (an `Examples`, tensors: not JSON; fastadv.plots.plot_examples
    draws it, and `fastadv eval` leaves it out of report.json), so that a picture never needs
    the attacks run again.
    class_map, all_classes: how the data's classes map to the model's outputs (a dict {name:
    output}, a list of names in output order, or a file of either; see
    fastadv.data.class_space), and whether a data set covering some of the model's classes is
    scored over every output instead of the logits of its classes (ImageNet-A's protocol, the
    default). The report's "class_space" says how labels were matched.

    adaptive: evaluate a defence: after the run above, run `adaptive_attacks(attacks)` with
    ``adaptive=True`` (input transformations use BPDA's backward pass) and, for randomized
    defences, the gradient averaged over `eot_samples` draws (EOT; not for a model whose
    `randomized` attribute is False, as Defended's without random transforms); the report then also holds
    "adaptive" (that run's report, its state in ``state_path + ".adaptive"``) and "comparison"
    (per eps: clean, non-adaptive and adaptive robust accuracy, their gap, and whether gradient
    masking is suspected, with the reason; see fastadv.defenses.report).
    """
    attacks = check.choices("attacks", attacks, tuple(ATTACKS))
    eps = check.numbers("eps", eps, at_least=0)
    check.positive_int("batch_size", batch_size)
    check.positive_int("steps", steps)
    check.flag("adaptive", adaptive)
    check.positive_int("eot_samples", eot_samples)
    options = {"amp": check.amp_dtype(amp), "channels_last": channels_last, "backend": backend}
    _check_state_path(state_path)
    selection = as_selection("data", data)
    workers = workers_for(selection, workers)
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
        raise ValueError(f"examples must be a non-negative integer, got {examples!r}")
    check.flag("all_classes", all_classes)
    run = functools.partial(_evaluation, model, selection, eps=eps, steps=steps, batch_size=batch_size, cascade=cascade,
                            seed=seed, distributed=distributed, progress=progress, workers=workers,
                            class_map=class_map, all_classes=all_classes)  # fmt: skip
    report = run(attacks, options, state_path, examples=examples)
    if not adaptive:
        return report
    # a model that declares itself deterministic (Defended without random transforms) needs no EOT
    eot = eot_samples if getattr(model, "randomized", True) else 1
    strong_options = {**options, "adaptive": True, "eot_samples": eot}
    strong = run(adaptive_attacks(attacks), strong_options, None if state_path is None else f"{state_path}.adaptive")
    return {**report, "adaptive": strong, "comparison": compare(report, strong)}


def _check_state_path(state_path) -> None:
    """state_path names a file that exists or can be created: not a folder, nor under a file."""
    if state_path is None:
        return
    if not isinstance(state_path, (str, os.PathLike)):
        raise TypeError(f"state_path must be a file path (str), got {type(state_path).__name__}")
    path = os.fspath(state_path)
    if os.path.isdir(path):
        example = os.path.join(path, "eval-state.pt")
        raise ValueError(f"state_path: {path} is a folder; give a file in it, e.g. {example}")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):  # the folders save_atomic would create
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"state_path: {ancestor} is a file, so {path} cannot be created under it")


def _evaluation(model, selection: Selection, attacks: list[str], options: dict, state_path: str | None, *,
                eps: list[float], steps: int, batch_size: int, cascade: bool, seed: int, distributed: bool | None,
                progress: bool, workers: int, examples: int = 0, class_map=None,
                all_classes: bool = False) -> dict:  # fmt: skip
    """One evaluation of `evaluate` (arguments checked) with the attacks' `options`."""
    backend = options["backend"]
    device = next(iter(model.parameters()), torch.empty(0)).device
    if distributed is None:
        distributed = _distributed.is_initialized()
    rank, world = _distributed.rank_and_world() if distributed else (0, 1)
    # every module keeps its own mode (a BatchNorm set to eval inside a train-mode model), as
    # the attacks do; parameters and buffers are given back too
    with attack_mode(model, "eval"):
        with torch.no_grad():
            outputs = int(model(first_images(selection, 1)[0].to(device)).shape[1])
        # class spaces (issue 28): labels as the model's outputs, the model restricted to the data's classes
        space = class_spaces.resolve(selection.source.classes, selection.labels, outputs, class_map=class_map,
                                     all_classes=all_classes)  # fmt: skip
        scored, classes = space.wrap(model), space.classes
        largest = max(range(len(eps)), key=lambda i: eps[i])
        keeper = _ExampleKeeper(examples, largest, eps[largest]) if examples else None
        job = _Job(scored, attacks, eps, steps, cascade, seed, classes, options, keeper)
        settings = {"attacks": attacks, "eps": eps, "steps": steps, "batch_size": batch_size, "cascade": cascade,
                    "seed": seed, "samples": len(selection), "world_size": world,
                    # autocast changes the numbers: a resume under another amp would mix two precisions
                    "amp": None if options["amp"] is None else str(options["amp"]),
                    # the norm sums are over the fooled samples (before 2026-12: over all attacked);
                    # a state of the older kind is refused rather than mixed in
                    "norm_sums": "fooled", "class_space": space.describe()}  # fmt: skip
        if options.get("adaptive"):
            settings.update(adaptive=True, eot_samples=options["eot_samples"])
        sums, first_batch, skipped, saved = _Sums(len(eps), len(attacks), classes), 0, [], {}
        rank_state = None if state_path is None else f"{state_path}.rank{rank}" if world > 1 else state_path
        # what the state's sums are of: resuming with another model or data would mix two evaluations
        identity = {} if rank_state is None else _identity(model, selection)
        if rank_state is not None and os.path.exists(rank_state):
            saved = load_checkpoint(rank_state, "evaluation")
            expected, found = {**settings, **identity}, {**saved["settings"], **saved.get("identity", {})}
            changed = [key for key in expected if found.get(key) != expected[key]]
            if changed:
                raise ValueError(
                    f"state_path: {rank_state} belongs to another evaluation (changed: {', '.join(changed)})"
                )
            sums.t.update(saved["sums"])  # (a state from before "non_finite" has none: zeros)
            first_batch, skipped = saved["next_batch"], list(saved.get("skipped", []))
        n = len(selection)
        mine = [(i, range(start, min(start + batch_size, n))) for i, start in enumerate(range(0, n, batch_size))
                if i % world == rank and i >= first_batch]  # fmt: skip
        stream = BatchStream(selection, mine, device, workers)
        stages = BatchStages(progress and rank == 0, saved.get("partial"))  # (a batch stopped mid-way)
        from tqdm import tqdm

        # the bar is updated by hand: iterating through tqdm would keep the last batch alive
        # while the next one is read (two batches in memory at once)
        bar = tqdm(total=len(stream), desc="eval", disable=not progress or rank != 0, unit="batch")
        for batch in stream:
            stages.start(batch.index, _stage_saver(rank_state, attacks, settings, identity, sums, batch.index, skipped))
            skipped += batch.bad
            if batch.y.numel():
                _evaluate_batch(job, batch.x, space.relabel(batch.y), batch.index, sums, stages)
            if rank_state is not None:
                save_atomic({"kind": "evaluation", "settings": settings, "identity": identity, "sums": sums.t,
                             "next_batch": batch.index + 1, "skipped": skipped}, rank_state)  # fmt: skip
            bar.update(1)
            del batch  # (see the bar)
        bar.close()
    if distributed:
        sums.reduce()
        skipped = _distributed.all_gather_lists(skipped)
    # every setting of every (eps, attack), read from the attacks as built
    used = {(e_index, a_index): ATTACKS[name].used(scored, e, steps, attack_options(name, options))
            for e_index, e in enumerate(eps) for a_index, name in enumerate(attacks)}  # fmt: skip
    report = _report(sums.t, attacks, eps, settings, device, backend, seed, used)
    calibration.add_to_report(report, sums.t["calibration_clean"], sums.t["calibration"])
    # which label is which class (an image folder's sub-folders sorted by name, CIFAR's meta)
    names = selection.source.classes
    report["classes"] = dict(zip(names, space.positions().tolist(), strict=True)) if names else None
    report["class_space"] = space.describe()  # the confusion matrices' index i is scored output i
    if examples:
        report["examples"] = keeper.kept  # None when this process evaluated no batch (resumed at the end)
    waited = torch.tensor([stream.waited, stream.seconds], dtype=torch.float64)
    waited = _distributed.all_reduce(waited, "max") if distributed else waited
    report["data_loading"] = {"workers": stream.workers, "seconds_waiting": float(waited[0]),
                              "share_waiting": float(waited[0] / waited[1]) if waited[1] > 0 else 0.0}  # fmt: skip
    report["skipped_images"] = [*selection.source.skipped, *skipped]
    return report


def _stage_saver(rank_state: str | None, attacks: list[str], settings: dict, identity: dict, sums: _Sums,
                 batch_index: int, skipped: list):  # fmt: skip
    """What saves the state after each AutoAttack stage of batch `batch_index`: the sums and
    skipped images as the batch found them (it runs again on resume) with the batch's record.
    None without a state file or an AutoAttack (the other attacks' batches are short)."""
    if rank_state is None or "autoattack" not in attacks:
        return None
    base, kept = {key: value.clone() for key, value in sums.t.items()}, list(skipped)

    def save(record: dict) -> None:
        save_atomic({"kind": "evaluation", "settings": settings, "identity": identity, "sums": base,
                     "next_batch": batch_index, "skipped": kept, "partial": record}, rank_state)  # fmt: skip

    return save


def data_fingerprint(selection: Selection) -> str:
    """What the data is, for resuming: tensors in memory by their bytes (a SHA-256), a streamed
    data set by its files (names, sizes, times; see Source.fingerprint), never read whole."""
    source = selection.source
    if isinstance(source, TensorSource) and selection.indices is None:
        return fingerprint((("images", source.images), ("labels", source.tensor_labels)))
    if isinstance(source, TensorSource):
        index = torch.as_tensor(selection.indices, dtype=torch.long)
        return fingerprint((("images", source.images[index.to(source.images.device)]),
                            ("labels", source.tensor_labels[index.to(source.tensor_labels.device)])))  # fmt: skip
    return selection.fingerprint()


def _identity(model: torch.nn.Module, selection: Selection) -> dict[str, str]:
    """Fingerprints of the model's weights (parameters and buffers) and of the data."""
    return {"model": fingerprint(model.state_dict().items()), "data": data_fingerprint(selection)}


def _evaluate_batch(job: _Job, x: torch.Tensor, y: torch.Tensor, batch_index: int, sums: _Sums,
                    stages: BatchStages | None = None) -> None:  # fmt: skip
    """Adds one batch to `sums` (`stages`: its record, see fastadv.eval_stages)."""
    with torch.no_grad():
        logits = job.model(x)
    check.finite_outputs(logits, f"clean images of batch {batch_index}")  # (the attacks check their own passes)
    batch = _Batch(x, y, batch_index, logits.argmax(1), calibration.confidence_of(logits))
    sums.t["clean"] += _confusion(y, batch.clean_pred, job.classes)
    sums.t["calibration_clean"] += calibration.bin_sums(batch.clean_confidence, batch.clean_pred == y)
    for e_index in range(len(job.eps)):
        _evaluate_at_eps(job, batch, e_index, sums.t, stages)


def _evaluate_at_eps(job: _Job, batch: _Batch, e_index: int, t: dict[str, torch.Tensor],
                     stages: BatchStages | None = None) -> None:  # fmt: skip
    """The attacks at one eps on one batch, in a cascade (without it, each on every correctly
    classified sample), added to the sums `t`."""
    y, clean_pred = batch.y, batch.clean_pred
    correct = clean_pred == y
    worst_pred, robust = clean_pred.clone(), correct.clone()
    worst_confidence = batch.clean_confidence.clone()
    outcomes: dict[int, _Outcome] = {}
    keep = job.keeper is not None and job.keeper.start(batch, e_index)

    def attack(a_index: int, targets: torch.Tensor) -> torch.Tensor:
        outcomes[a_index] = _attack_batch(job, batch, targets, a_index, e_index, stages)
        return outcomes[a_index].fooled

    def record(a_index: int, run: StageRun) -> None:
        outcome = outcomes.pop(a_index, _NOTHING)
        if keep:
            job.keeper.add(job.attacks[a_index], run.index, outcome)
        own_pred, own_confidence = clean_pred.clone(), batch.clean_confidence.clone()
        if outcome.predicted is not None:
            own_pred[run.index] = outcome.predicted
            worst_pred[run.index[run.newly]] = outcome.predicted[run.newly]  # the first to fool a sample sets it
        if outcome.confidence is not None:  # (with the cascade, run.index holds survivors only)
            own_confidence[run.index] = worst_confidence[run.index] = outcome.confidence.to(own_confidence.device)
        t["cm"][e_index, a_index] += _confusion(y, worst_pred if job.cascade else own_pred, job.classes)
        t["fooled"][e_index, a_index] += float((correct & ~robust).sum() if job.cascade else run.fooled.sum())
        t["attacked"][e_index, a_index] += float(run.index.numel())
        t["own_fooled"][e_index, a_index] += float(run.fooled.sum())
        t["non_finite"][e_index, a_index] += float(outcome.non_finite)
        t["linf"][e_index, a_index] += outcome.norms[0]
        t["l2"][e_index, a_index] += outcome.norms[1]
        t["seconds"][e_index, a_index] += outcome.seconds
        confidence, predicted = (worst_confidence, worst_pred) if job.cascade else (own_confidence, own_pred)
        t["calibration"][e_index, a_index] += calibration.bin_sums(confidence, predicted == y)

    run_cascade(range(len(job.attacks)), robust, attack, survivors_only=job.cascade, on_stage=record)
    if keep:
        job.keeper.finish(batch)
    t["worst"][e_index] += _confusion(y, worst_pred, job.classes)


def _report(t, attacks, eps, settings, device, backend, seed, used) -> dict:
    from ._environment import device_name
    from .ops import resolve_backend

    n = float(t["clean"].sum())
    correct = float(t["clean"].diag().sum())
    rows, worst = [], []
    for e_index, e in enumerate(eps):
        for a_index, name in enumerate(attacks):
            cm = t["cm"][e_index, a_index]
            attacked = float(t["attacked"][e_index, a_index])
            own = float(t["own_fooled"][e_index, a_index])
            seconds = float(t["seconds"][e_index, a_index])
            precision, recall, f1 = _macro_scores(cm)
            rows.append({
                "attack": name, "norm": ATTACKS[name].norm, "eps": e,
                # with the cascade: after this attack and every earlier one at this eps
                "cumulative": bool(settings["cascade"]),
                "robust_accuracy": float(cm.diag().sum()) / max(n, 1),
                "success_rate": float(t["fooled"][e_index, a_index]) / max(correct, 1),
                "precision": precision, "recall": recall, "f1": f1,
                # this attack alone: the samples it attacked, those it fooled, and its numbers over them
                "samples_attacked": int(attacked),
                "samples_fooled": int(own),
                "own_success_rate": own / attacked if attacked else None,
                "mean_linf": float(t["linf"][e_index, a_index]) / own if own else None,
                "mean_l2": float(t["l2"][e_index, a_index]) / own if own else None,
                "non_finite": int(t["non_finite"][e_index, a_index]),
                "images_per_s": attacked / seconds if attacked and seconds > 0 else None,
                "settings": used[e_index, a_index],
            })  # fmt: skip
        worst_cm = t["worst"][e_index]
        worst.append({"eps": e, "robust_accuracy": float(worst_cm.diag().sum()) / max(n, 1),
                      "f1": _macro_scores(worst_cm)[2]})  # fmt: skip
    return {
        "fastadv": __version__,
        "torch": torch.__version__,
        "device": device_name(torch.device(device)),
        "backend": resolve_backend(backend, device),
        "seed": seed,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "samples": int(n),
        "clean_accuracy": correct / max(n, 1),
        "attacks": rows,
        "worst_case": worst,
    }


def format_classes(classes: dict[str, int] | None, shown: int = 12) -> str | None:
    """The class -> label map as one line ("classes: blue=0, green=1, red=2"), the first `shown`
    of a long one (all of them are in the report), or None when the data names no classes."""
    if not classes:
        return None
    items = [f"{name}={index}" for name, index in sorted(classes.items(), key=lambda item: item[1])]
    more = f", ... ({len(items)} classes, all in report.json)" if len(items) > shown else ""
    return f"classes (label = index): {', '.join(items[:shown])}{more}"


def _number(value: float | None, spec: str, width: int) -> str:
    """`value` formatted, or a dash where it is undefined (an attack that attacked or fooled nothing)."""
    return f"{'—' if value is None else format(value, spec):>{width}}"


def format_report(report: dict) -> str:
    """The report as a printed table: one line per (eps, attack), then the worst case per eps.

    Columns: "robust", "success" and "F1" are after this attack, and with the cascade (the
    default) after every attack above it at the same eps too: robust accuracy over all samples,
    the share of correctly classified samples fooled so far, macro F1. "attacked", "fooled",
    the mean norms and img/s are this attack's alone: the samples it ran on, those it fooled,
    the mean L-inf and L2 norm of the perturbations that fooled (over "fooled" samples), and its
    throughput on the samples it attacked; "—" where it attacked (or fooled) nothing."""
    cumulative = any(r.get("cumulative", True) for r in report["attacks"])
    header = (("eps", 8), ("attack", 10), ("robust", 8), ("success", 8), ("F1", 6), ("attacked", 8), ("fooled", 7),
              ("mean Linf", 10), ("mean L2", 8), ("img/s", 9))  # fmt: skip
    lines = [
        # fastadv eval --defense: this table is the bare model's; the defences' follow in the comparison
        *(["undefended model (the defended models: the comparison below)"] if "defenses" in report else []),
        f"clean accuracy {100 * report['clean_accuracy']:.2f}% on {report['samples']} samples "
        f"({report['device']}, backend {report['backend']})",
        " ".join(f"{h:>{w}}" for h, w in header),
    ]
    for r in report["attacks"]:
        lines.append(
            f"{r['eps']:>8.4g} {r['attack']:>10} {100 * r['robust_accuracy']:>7.2f}% {100 * r['success_rate']:>7.2f}% "
            f"{r['f1']:>6.3f} {r['samples_attacked']:>8} {r.get('samples_fooled', 0):>7} "
            f"{_number(r['mean_linf'], '.4f', 10)} {_number(r['mean_l2'], '.4f', 8)} "
            f"{_number(r['images_per_s'], '.1f', 9)}"
        )
    lines.append(
        ("robust, success, F1: after this attack and the ones above it at the same eps (cascade); "
         if cumulative else "robust, success, F1: this attack alone (no cascade); ")
        + "attacked, fooled, img/s: this attack's own; mean Linf/L2: over the samples it fooled"
    )  # fmt: skip
    bad = [f"{r['attack']} at eps {r['eps']:.4g}: {r['non_finite']}" for r in report["attacks"] if r.get("non_finite")]
    if bad:
        lines.append(f"non-finite adversarial images (counted as not fooled): {', '.join(bad)}")
    if report.get("skipped_images"):
        lines.append(f"unreadable images left out: {len(report['skipped_images'])} (listed in the report)")
    worst = ", ".join(f"eps {w['eps']:.4g}: {100 * w['robust_accuracy']:.2f}%" for w in report["worst_case"])
    lines.append(f"worst case over attacks (robust accuracy): {worst}")
    classes = format_classes(report.get("classes"))
    if classes:
        lines.insert(2 if "defenses" in report else 1, classes)
    calibrated = calibration.format_line(report)
    if calibrated:
        lines.append(calibrated)
    space = class_spaces.summary(report.get("class_space"))  # how labels became outputs (issue 28)
    if space:
        lines.insert(2 if "defenses" in report else 1, space)
    return "\n".join(lines)


def robust_accuracy(report: dict, attack: str | None = None) -> dict[float, float]:
    """{eps: robust accuracy} for one attack's row (cumulative under cascade), or the worst case."""
    if attack is None:
        return {w["eps"]: w["robust_accuracy"] for w in report["worst_case"]}
    return {r["eps"]: r["robust_accuracy"] for r in report["attacks"] if r["attack"] == attack}


class _CallableModule(types.ModuleType):
    """`fastadv.evaluate(model, data, ...)` calls :func:`evaluate`: the package's attribute
    `evaluate` is this module (Python's import sets it whenever fastadv.evaluate is imported, so
    a function of that name at package level would be replaced by the module), and users reach
    for it as the function (issue 25). ``from fastadv.evaluate import evaluate`` is the same
    function."""

    def __call__(self, *args, **kwargs) -> dict:
        return evaluate(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(evaluate)


sys.modules[__name__].__class__ = _CallableModule
