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
the margin-loss PGD added, see `fastadv.attacks.catalog.adaptive_attacks`), and the report sets
the two side by side (`fastadv.defenses.report`).

This module is the engine (batches, the cascade per eps, one attack on some samples); the sums
it adds to are in sums.py, the report built from them in report.py, the state file in
resume.py, an AutoAttack batch's stages in stages.py.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import _distributed
from .. import checks as check
from .._cascade import StageRun, run_cascade
from ..attacks.catalog import ATTACKS, adaptive_attacks, attack_options
from ..attacks.model_mode import attack_mode
from ..data import BatchStream, Selection, Source, as_selection
from ..data import class_space as class_spaces
from ..data.loader import first_images, workers_for
from ..defenses.report import compare
from . import calibration
from .examples import ExampleKeeper
from .report import build_report
from .resume import check_state_path, fingerprints, load_state, save_state, stage_saver
from .stages import BatchStages
from .sums import Sums, confusion

__all__ = ["evaluate", "within_budget"]


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
    keeper: ExampleKeeper | None = None


@dataclass(frozen=True)
class Batch:
    """One batch: images, labels, its index among the evaluation's batches (it seeds the
    attacks), and the model's clean predictions."""

    x: torch.Tensor
    y: torch.Tensor
    index: int
    clean_pred: torch.Tensor
    clean_confidence: torch.Tensor | None = None  # the softmax probability of clean_pred (calibration)


@dataclass(frozen=True)
class Outcome:
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


_NOTHING = Outcome(torch.zeros(0, dtype=torch.bool), None, (0.0, 0.0), 0.0)  # no sample to attack


def within_budget(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """bool [B]: the L2 distance of adv from x is within eps (up to float32 rounding): where a
    minimal-norm attack (`AttackEntry.minimal_norm`) fools the model within the budget eps."""
    return (adv.float() - x.float()).flatten(1).norm(dim=1) <= eps * (1 + 1e-6)


def _attack_batch(job: _Job, batch: Batch, targets: torch.Tensor, attack_index: int, eps_index: int,
                  stages: BatchStages | None = None) -> Outcome:  # fmt: skip
    """Runs attack `attack_index` at eps `eps_index` on the samples `targets` (indices) of the
    batch, seeded by (seed, batch index, attack index, eps index); with `stages`, records the
    outcome there, or takes it from there when a resumed evaluation's record holds it."""
    key = f"{eps_index}/{attack_index}"
    if stages is not None and (saved := stages.finished(key)) is not None:
        return Outcome(saved["fooled"].to(targets.device), None if saved["predicted"] is None else
                       saved["predicted"].to(targets.device), tuple(saved["norms"]), saved["seconds"],
                       saved["non_finite"], confidence=saved.get("confidence"))  # fmt: skip
    outcome = _run_attack(job, batch, targets, attack_index, eps_index, stages)
    if stages is not None:
        stages.done(key, {"fooled": outcome.fooled.cpu(), "norms": list(outcome.norms), "seconds": outcome.seconds,
                          "predicted": None if outcome.predicted is None else outcome.predicted.cpu(),
                          "non_finite": outcome.non_finite,
                          "confidence": None if outcome.confidence is None else outcome.confidence.cpu()})  # fmt: skip
    return outcome


def _run_attack(job: _Job, batch: Batch, targets: torch.Tensor, attack_index: int, eps_index: int,
                stages: BatchStages | None) -> Outcome:  # fmt: skip
    x, y = batch.x, batch.y
    eps, attack_name = job.eps[eps_index], job.attacks[attack_index]
    if eps == 0:
        return Outcome(torch.zeros_like(targets, dtype=torch.bool), None, (0.0, 0.0), 0.0)
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
    # recorded by the attack, with the softmax probability of its class (the calibration error): no second forward
    success, predicted, confidence = result.success, result.predicted, result.confidence
    if ATTACKS[attack_name].minimal_norm:  # beyond the budget the sample keeps its clean (correct) class
        within = within_budget(adv, x_t, eps)
        success, predicted = success & within, torch.where(within, predicted, y_t)
        adv = torch.where(within.view(-1, *([1] * (adv.dim() - 1))), adv, x_t)
        if confidence is not None:  # (the attacked samples are classified correctly: y_t is their clean class)
            confidence = torch.where(within, confidence, batch.clean_confidence[targets].to(confidence.device))
    # over the samples fooled only: a failure's image (the clean one for AutoAttack, the ball's
    # edge for PGD) says nothing of the perturbation that fools
    delta = delta[success]
    norms = (float(torch.linalg.vector_norm(delta, float("inf"), dim=1).sum()),
             float(torch.linalg.vector_norm(delta, dim=1).sum()))  # fmt: skip
    # the attacks never return a non-finite image (they keep the clean one: not fooled)
    non_finite = 0 if result.non_finite is None else int(result.non_finite.sum())
    if not adv.shape[0]:
        confidence = None
    elif confidence is None or job.options.get("amp") is not None:
        # the attack ran the model under autocast: the report's confidences are float32 ones, as the clean pass's
        with torch.no_grad():
            confidence = calibration.confidence_of(job.model(adv), predicted)
    return Outcome(success, predicted, norms, seconds, non_finite, adv if job.keeper is not None else None,
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
    channels_last: bool | None = None,
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
    data set of fastadv.data (a Source, or a Selection of one: see fastadv.data.open_data and
    fastadv.data.select), against `attacks` (names of fastadv.attacks.catalog.ATTACKS; iterative
    ones take `steps`, "square" and "autoattack" keep AutoAttack's budgets) at every `eps`, and
    returns the report (a JSON-ready dict; see :func:`format_report`). The model runs in eval mode and is given back
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
    eps, in ``report["examples"]`` (an `Examples`, tensors: not JSON; fastadv.evaluation.plots.plot_examples
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
    options = {"amp": check.amp_dtype(amp), "backend": backend}
    if channels_last is not None:  # (None: each attack's default; AutoAttack's is "auto")
        options["channels_last"] = check.flag("channels_last", channels_last)
    check_state_path(state_path)
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
        # labels as the model's outputs; a data set of some of its classes scored over their logits
        space = class_spaces.resolve(selection.source.classes, selection.labels, outputs, class_map=class_map,
                                     all_classes=all_classes)  # fmt: skip
        scored, classes = space.wrap(model), space.classes
        largest = max(range(len(eps)), key=lambda i: eps[i])
        keeper = ExampleKeeper(examples, largest, eps[largest]) if examples else None
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
        sums, first_batch, skipped = Sums(len(eps), len(attacks), classes), 0, []
        rank_state = None if state_path is None else f"{state_path}.rank{rank}" if world > 1 else state_path
        # what the state's sums are of: resuming with another model or data would mix two evaluations
        identity = {} if rank_state is None else fingerprints(model, selection)
        saved = load_state(rank_state, settings, identity)
        if saved:
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
            stages.start(batch.index, stage_saver(rank_state, attacks, settings, identity, sums, batch.index, skipped))
            skipped += batch.bad
            if batch.y.numel():
                _evaluate_batch(job, batch.x, space.relabel(batch.y), batch.index, sums, stages)
            if rank_state is not None:
                save_state(rank_state, settings, identity, sums.t, batch.index + 1, skipped)
            bar.update(1)
            del batch  # (see the bar)
        bar.close()
    if distributed:
        sums.reduce()
        skipped = _distributed.all_gather_lists(skipped)
    # every setting of every (eps, attack), read from the attacks as built
    used = {(e_index, a_index): ATTACKS[name].used(scored, e, steps, attack_options(name, options))
            for e_index, e in enumerate(eps) for a_index, name in enumerate(attacks)}  # fmt: skip
    report = build_report(sums.t, attacks, eps, settings, device, backend, seed, used)
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


def _evaluate_batch(job: _Job, x: torch.Tensor, y: torch.Tensor, batch_index: int, sums: Sums,
                    stages: BatchStages | None = None) -> None:  # fmt: skip
    """Adds one batch to `sums` (`stages`: its record, see stages.py)."""
    with torch.no_grad():
        logits = job.model(x)
    check.finite_outputs(logits, f"clean images of batch {batch_index}")  # (the attacks check their own passes)
    batch = Batch(x, y, batch_index, logits.argmax(1), calibration.confidence_of(logits))
    sums.t["clean"] += confusion(y, batch.clean_pred, job.classes)
    sums.t["calibration_clean"] += calibration.bin_sums(batch.clean_confidence, batch.clean_pred == y)
    for e_index in range(len(job.eps)):
        _evaluate_at_eps(job, batch, e_index, sums.t, stages)


def _evaluate_at_eps(job: _Job, batch: Batch, e_index: int, t: dict[str, torch.Tensor],
                     stages: BatchStages | None = None) -> None:  # fmt: skip
    """The attacks at one eps on one batch, in a cascade (without it, each on every correctly
    classified sample), added to the sums `t`."""
    y, clean_pred = batch.y, batch.clean_pred
    correct = clean_pred == y
    worst_pred, robust = clean_pred.clone(), correct.clone()
    worst_confidence = batch.clean_confidence.clone()
    outcomes: dict[int, Outcome] = {}
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
        t["cm"][e_index, a_index] += confusion(y, worst_pred if job.cascade else own_pred, job.classes)
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
    t["worst"][e_index] += confusion(y, worst_pred, job.classes)
