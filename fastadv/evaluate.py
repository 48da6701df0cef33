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
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import _distributed
from . import _validate as check
from ._cascade import StageRun, run_cascade
from ._version import __version__
from .attacks import APGD, APGDT, CW, FGSM, MIFGSM, PGD, PGDL2, DeepFool, Square
from .attacks._model_state import attack_mode
from .autoattack import AutoAttack, AutoAttackLite, AutoAttackResult, Stage
from .checkpoint import fingerprint, save_atomic
from .checkpoint import load as load_checkpoint
from .data import BatchStream, Selection, Source, TensorSource, as_selection
from .data.loader import first_images, workers_for
from .defenses.report import compare
from .eval_stages import BatchStages

__all__ = ["ATTACKS", "AutoAttack", "AutoAttackLite", "AutoAttackResult", "Stage", "evaluate", "format_report",
           "robust_accuracy"]  # fmt: skip

# name -> (norm, factory(model, eps, steps, generator, **options))
ATTACKS = {
    "fgsm": ("linf", lambda m, eps, steps, gen, **o: FGSM(m, eps=eps, **o)),
    "pgd": ("linf", lambda m, eps, steps, gen, **o: PGD(m, eps=eps, alpha=eps / 4, steps=steps, generator=gen, **o)),
    # Carlini and Wagner's logit margin: what defeats defensive distillation's saturated softmax
    "pgd-margin": (
        "linf",
        lambda m, eps, steps, gen, **o: PGD(m, eps=eps, alpha=eps / 4, steps=steps, generator=gen, loss="margin", **o),
    ),  # fmt: skip
    "pgd-l2": ("l2", lambda m, eps, steps, gen, **o: PGDL2(m, eps=eps, alpha=eps / 4, steps=steps, generator=gen, **o)),
    "mifgsm": ("linf", lambda m, eps, steps, gen, **o: MIFGSM(m, eps=eps, alpha=eps / 4, steps=steps, **o)),
    # AutoAttack's first two stages: `attacks=["apgd-ce", "apgd-t"]` with the cascade
    "apgd-ce": ("linf", lambda m, eps, steps, gen, **o: APGD(m, eps=eps, steps=steps, loss="ce", generator=gen, **o)),
    "apgd-dlr": ("linf", lambda m, eps, steps, gen, **o: APGD(m, eps=eps, steps=steps, loss="dlr", generator=gen, **o)),
    "apgd-t": ("linf", lambda m, eps, steps, gen, **o: APGDT(m, eps=eps, steps=steps, generator=gen, **o)),
    # score-based, as AutoAttack's last stage (5000 queries; `steps` does not apply)
    "square": ("linf", lambda m, eps, steps, gen, **o: Square(m, eps=eps, resc_schedule=False, generator=gen, **o)),
    # AutoAttack's standard version, all four stages at their own settings (`steps` does not apply)
    "autoattack": (
        "linf",
        lambda m, eps, steps, gen, **o: _WholeBatch(AutoAttack(m, "Linf", eps, seed=_seed(gen), **o)),
    ),
    # minimal-perturbation attacks: a sample counts as fooled at eps only if its L2 distance is <= eps
    "deepfool": ("l2", lambda m, eps, steps, gen, **o: DeepFool(m, steps=steps, **o)),
    "cw": ("l2", lambda m, eps, steps, gen, **o: CW(m, steps=steps, lr=0.05, binary_search_steps=5, **o)),
}
MINIMAL_NORM = ("deepfool", "cw")
# The attacks an adaptive evaluation adds after the given ones (see adaptive_attacks) and those
# whose gradient is averaged over draws with eot_samples (APGD's is eot_iter).
_CE_LINF = ("fgsm", "pgd", "mifgsm", "apgd-ce")
_EOT = ("fgsm", "pgd", "pgd-margin", "pgd-l2", "mifgsm")


def adaptive_attacks(attacks: Sequence[str]) -> list[str]:
    """The attacks of an adaptive evaluation: `attacks`, then "pgd-margin" when they include an
    L-inf attack on cross-entropy and not it already (a saturated softmax, as defensive
    distillation's, hides the cross-entropy gradient but not the logits')."""
    attacks = list(attacks)
    if any(a in _CE_LINF for a in attacks) and "pgd-margin" not in attacks:
        attacks.append("pgd-margin")
    return attacks


def _attack_options(name: str, options: dict) -> dict:
    """The options of attack `name` in an evaluation: eot_samples goes to the gradient loop's
    attacks, as eot_iter to APGD's, and is dropped for the others."""
    options = dict(options)
    eot = options.pop("eot_samples", 1)
    if name in _EOT and eot > 1:
        options["eot_samples"] = eot
    elif name.startswith("apgd") and eot > 1:
        options["eot_iter"] = eot
    return options


def _seed(generator: torch.Generator) -> int:
    """A seed drawn from `generator`, for the attacks seeded by a number (AutoAttack's stages)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


@dataclass(frozen=True)
class _WholeBatch:
    """AutoAttack on the samples evaluate gives it at once (its chunks are the evaluation's batches)."""

    attack: AutoAttack

    def run(self, images: torch.Tensor, labels: torch.Tensor, **hooks) -> AutoAttackResult:
        """hooks: on_progress, on_stage_end and resume, as AutoAttack.run takes them."""
        return self.attack.run(images, labels, batch_size=max(1, images.shape[0]), **hooks)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.run(images, labels).adv


class _Sums:
    """Every per-sample quantity the report needs, summed. Keys: "clean" ([K, K] confusion),
    "worst" (per eps, the confusion of the worst case over all attacks), and per (eps index,
    attack index): "cm" (confusion under the attacks so far with cascade, under this attack
    alone without), "fooled", "attacked", "non_finite" (samples whose adversarial candidate had
    NaN or infinite values: counted as not fooled), "linf", "l2", "seconds"."""

    def __init__(self, n_eps: int, n_attacks: int, classes: int):
        self.t = {
            "clean": torch.zeros(classes, classes, dtype=torch.float64),
            "cm": torch.zeros(n_eps, n_attacks, classes, classes, dtype=torch.float64),
            "worst": torch.zeros(n_eps, classes, classes, dtype=torch.float64),
            "fooled": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "attacked": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "non_finite": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "linf": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "l2": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
            "seconds": torch.zeros(n_eps, n_attacks, dtype=torch.float64),
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


@dataclass(frozen=True)
class _Batch:
    """One batch: images, labels, its index among the evaluation's batches (it seeds the
    attacks), and the model's clean predictions."""

    x: torch.Tensor
    y: torch.Tensor
    index: int
    clean_pred: torch.Tensor


@dataclass(frozen=True)
class _Outcome:
    """One attack on some samples of a batch: which it fooled (bool over them), the predictions
    on their adversarial images (None when no attack ran), the sums of their L-inf and L2
    perturbation norms, the attack's seconds, and how many of them had a non-finite candidate."""

    fooled: torch.Tensor
    predicted: torch.Tensor | None
    norms: tuple[float, float]
    seconds: float
    non_finite: int = 0


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
                        saved["non_finite"])  # fmt: skip
    outcome = _run_attack(job, batch, targets, attack_index, eps_index, stages)
    if stages is not None:
        stages.done(key, {"fooled": outcome.fooled.cpu(), "norms": list(outcome.norms), "seconds": outcome.seconds,
                          "predicted": None if outcome.predicted is None else outcome.predicted.cpu(),
                          "non_finite": outcome.non_finite})  # fmt: skip
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
    norm, factory = ATTACKS[attack_name]
    options = _attack_options(attack_name, job.options)
    staged = attack_name == "autoattack" and stages is not None
    if staged and stages.show:
        options.update(verbose=True, log=stages.write)
    attack = factory(job.model, eps, job.steps, generator, **options)
    start = time.perf_counter()
    with contextlib.ExitStack() as scope:
        if staged:  # its stages shown and saved; resumed from the last one saved
            title = f"autoattack at eps {eps:g} on batch {batch.index + 1}: {targets.numel()} samples"
            hooks = scope.enter_context(stages.autoattack(f"{eps_index}/{attack_index}", targets, x[targets], title))
            result = attack.run(x[targets], y[targets], **hooks)
            start -= hooks["resume"].seconds if "resume" in hooks else 0.0  # the time before the stop counts
        else:
            result = attack.run(x[targets], y[targets])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - start
    delta = (result.adv.float() - x[targets].float()).flatten(1)
    success, predicted = result.success, result.predicted  # recorded by the attack: no second forward
    if attack_name in MINIMAL_NORM:  # beyond the budget the sample keeps its clean (correct) class
        within = within_budget(result.adv, x[targets], eps)
        success, predicted = success & within, torch.where(within, predicted, y[targets])
        delta = torch.where(within.unsqueeze(1), delta, torch.zeros_like(delta))
    norms = (float(delta.abs().amax(1).sum()), float(delta.norm(dim=1).sum()))
    # the attacks never return a non-finite image (they keep the clean one: not fooled)
    non_finite = 0 if result.non_finite is None else int(result.non_finite.sum())
    return _Outcome(success, predicted, norms, seconds, non_finite)


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
    selection = as_selection("data", data)
    workers = workers_for(selection, workers)
    run = functools.partial(_evaluation, model, selection, eps=eps, steps=steps, batch_size=batch_size, cascade=cascade,
                            seed=seed, distributed=distributed, progress=progress, workers=workers)  # fmt: skip
    report = run(attacks, options, state_path)
    if not adaptive:
        return report
    # a model that declares itself deterministic (Defended without random transforms) needs no EOT
    eot = eot_samples if getattr(model, "randomized", True) else 1
    strong_options = {**options, "adaptive": True, "eot_samples": eot}
    strong = run(adaptive_attacks(attacks), strong_options, None if state_path is None else f"{state_path}.adaptive")
    return {**report, "adaptive": strong, "comparison": compare(report, strong)}


def _evaluation(model, selection: Selection, attacks: list[str], options: dict, state_path: str | None, *,
                eps: list[float], steps: int, batch_size: int, cascade: bool, seed: int, distributed: bool | None,
                progress: bool, workers: int) -> dict:  # fmt: skip
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
            classes = int(model(first_images(selection, 1)[0].to(device)).shape[1])
        job = _Job(model, attacks, eps, steps, cascade, seed, classes, options)
        settings = {"attacks": attacks, "eps": eps, "steps": steps, "batch_size": batch_size, "cascade": cascade,
                    "seed": seed, "samples": len(selection), "world_size": world}  # fmt: skip
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

        for batch in tqdm(stream, desc="eval", disable=not progress or rank != 0, unit="batch"):
            stages.start(batch.index, _stage_saver(rank_state, attacks, settings, identity, sums, batch.index, skipped))
            skipped += batch.bad
            if batch.y.numel():
                _evaluate_batch(job, batch.x, batch.y, batch.index, sums, stages)
            if rank_state is not None:
                save_atomic({"kind": "evaluation", "settings": settings, "identity": identity, "sums": sums.t,
                             "next_batch": batch.index + 1, "skipped": skipped}, rank_state)  # fmt: skip
    if distributed:
        sums.reduce()
        skipped = _distributed.all_gather_lists(skipped)
    report = _report(sums.t, attacks, eps, settings, device, backend, seed)
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
        batch = _Batch(x, y, batch_index, job.model(x).argmax(1))
    sums.t["clean"] += _confusion(y, batch.clean_pred, job.classes)
    for e_index in range(len(job.eps)):
        _evaluate_at_eps(job, batch, e_index, sums.t, stages)


def _evaluate_at_eps(job: _Job, batch: _Batch, e_index: int, t: dict[str, torch.Tensor],
                     stages: BatchStages | None = None) -> None:  # fmt: skip
    """The attacks at one eps on one batch, in a cascade (without it, each on every correctly
    classified sample), added to the sums `t`."""
    y, clean_pred = batch.y, batch.clean_pred
    correct = clean_pred == y
    worst_pred, robust = clean_pred.clone(), correct.clone()
    outcomes: dict[int, _Outcome] = {}

    def attack(a_index: int, targets: torch.Tensor) -> torch.Tensor:
        outcomes[a_index] = _attack_batch(job, batch, targets, a_index, e_index, stages)
        return outcomes[a_index].fooled

    def record(a_index: int, run: StageRun) -> None:
        outcome = outcomes.pop(a_index, _NOTHING)
        own_pred = clean_pred.clone()
        if outcome.predicted is not None:
            own_pred[run.index] = outcome.predicted
            worst_pred[run.index[run.newly]] = outcome.predicted[run.newly]  # the first to fool a sample sets it
        t["cm"][e_index, a_index] += _confusion(y, worst_pred if job.cascade else own_pred, job.classes)
        t["fooled"][e_index, a_index] += float((correct & ~robust).sum() if job.cascade else run.fooled.sum())
        t["attacked"][e_index, a_index] += float(run.index.numel())
        t["non_finite"][e_index, a_index] += float(outcome.non_finite)
        t["linf"][e_index, a_index] += outcome.norms[0]
        t["l2"][e_index, a_index] += outcome.norms[1]
        t["seconds"][e_index, a_index] += outcome.seconds

    run_cascade(range(len(job.attacks)), robust, attack, survivors_only=job.cascade, on_stage=record)
    t["worst"][e_index] += _confusion(y, worst_pred, job.classes)


def _report(t, attacks, eps, settings, device, backend, seed) -> dict:
    from ._environment import device_name
    from .ops import resolve_backend

    n = float(t["clean"].sum())
    correct = float(t["clean"].diag().sum())
    rows, worst = [], []
    for e_index, e in enumerate(eps):
        for a_index, name in enumerate(attacks):
            cm = t["cm"][e_index, a_index]
            attacked = float(t["attacked"][e_index, a_index])
            seconds = float(t["seconds"][e_index, a_index])
            precision, recall, f1 = _macro_scores(cm)
            rows.append({
                "attack": name, "norm": ATTACKS[name][0], "eps": e,
                "robust_accuracy": float(cm.diag().sum()) / max(n, 1),
                "success_rate": float(t["fooled"][e_index, a_index]) / max(correct, 1),
                "precision": precision, "recall": recall, "f1": f1,
                "mean_linf": float(t["linf"][e_index, a_index]) / max(attacked, 1),
                "mean_l2": float(t["l2"][e_index, a_index]) / max(attacked, 1),
                "samples_attacked": int(attacked),
                "non_finite": int(t["non_finite"][e_index, a_index]),
                "images_per_s": attacked / seconds if seconds > 0 else None,
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


def format_report(report: dict) -> str:
    """The report as a printed table: one line per (eps, attack), then the worst case per eps."""
    lines = [
        f"clean accuracy {100 * report['clean_accuracy']:.2f}% on {report['samples']} samples "
        f"({report['device']}, backend {report['backend']})",
        " ".join(
            f"{h:>{w}}"
            for h, w in (
                ("eps", 8),
                ("attack", 8),
                ("robust", 8),
                ("success", 8),
                ("F1", 6),
                ("mean Linf", 10),
                ("mean L2", 8),
                ("img/s", 9),
            )
        ),  # fmt: skip
    ]
    for r in report["attacks"]:
        speed = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        lines.append(
            f"{r['eps']:>8.4g} {r['attack']:>8} {100 * r['robust_accuracy']:>7.2f}% {100 * r['success_rate']:>7.2f}% "
            f"{r['f1']:>6.3f} {r['mean_linf']:>10.4f} {r['mean_l2']:>8.4f} {speed:>9}"
        )
    bad = [f"{r['attack']} at eps {r['eps']:.4g}: {r['non_finite']}" for r in report["attacks"] if r.get("non_finite")]
    if bad:
        lines.append(f"non-finite adversarial images (counted as not fooled): {', '.join(bad)}")
    if report.get("skipped_images"):
        lines.append(f"unreadable images left out: {len(report['skipped_images'])} (listed in the report)")
    worst = ", ".join(f"eps {w['eps']:.4g}: {100 * w['robust_accuracy']:.2f}%" for w in report["worst_case"])
    lines.append(f"worst case over attacks (robust accuracy): {worst}")
    return "\n".join(lines)


def robust_accuracy(report: dict, attack: str | None = None) -> dict[float, float]:
    """{eps: robust accuracy} for one attack's row (cumulative under cascade), or the worst case."""
    if attack is None:
        return {w["eps"]: w["robust_accuracy"] for w in report["worst_case"]}
    return {r["eps"]: r["robust_accuracy"] for r in report["attacks"] if r["attack"] == attack}
