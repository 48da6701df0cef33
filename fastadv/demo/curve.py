"""The robustness-curve tab's job: `fastadv.evaluate` over the first samples of the data for the
chosen attacks and eps grid, behind the chosen defence and adaptive or not, its report exactly
what `fastadv eval [--defense SPEC] [--adaptive]` writes (report.json, and robustness.png and
defenses.png from fastadv.evaluation.plots; the same function,
fastadv.evaluation.evaluate_defenses, runs both), kept per (model, attacks, eps grid, steps,
samples, seed, defence, adaptive, EOT draws) so asking again costs nothing."""

from __future__ import annotations

import copy
import functools
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..data import as_selection
from ..evaluation import evaluate, evaluate_defenses, write_json
from .defense_choices import NO_DEFENSE
from .explorer import Explorer

BATCHES = 10  # the data is cut into so many batches: evaluate reports progress per batch


@dataclass(frozen=True)
class Curve:
    """A finished job: the report (as `fastadv eval` writes it), the files it was written to
    (report.json, and the plot the page shows: robustness.png, or defenses.png, the bars of
    `fastadv eval`'s comparison, for a defence or an adaptive run), and whether it came from the
    cache."""

    report: dict
    report_path: str
    plot_path: str
    cached: bool


class CurveJobs:
    """Runs and keeps the curves of one Explorer. Thread-safe: the page's requests run in
    threads; one key is computed once even when asked twice at the same time."""

    def __init__(self, explorer: Explorer, folder: str | None = None, *, batches: int = BATCHES) -> None:
        self.explorer, self.batches = explorer, batches
        # its own copy of the model: a curve runs beside the explorer's attacks, which toggle
        # the parameters' requires_grad
        self.model = copy.deepcopy(explorer.model)
        self.folder = folder or tempfile.mkdtemp(prefix="fastadv-demo-")
        self._done: dict[tuple, Curve] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.computed = 0  # evaluations run (the rest came from the cache)

    def key(self, attacks: Sequence[str], eps: Sequence[float], steps: int, samples: int, seed: int,
            defense: str = NO_DEFENSE, adaptive: bool = False, eot_samples: int = 1) -> tuple:  # fmt: skip
        return (self.explorer.model_id, tuple(attacks), tuple(float(e) for e in eps), int(steps), int(samples),
                int(seed), defense, bool(adaptive), int(eot_samples) if adaptive else 1)  # fmt: skip

    def run(self, attacks: Sequence[str], eps: Sequence[float], *, steps: int = 20, samples: int = 200,
            seed: int = 0, defense: str = NO_DEFENSE, adaptive: bool = False, eot_samples: int = 1,
            progress: bool = False) -> Curve:  # fmt: skip
        """The curve of `attacks` (names of fastadv.attacks.catalog.ATTACKS) at `eps` over the first
        `samples` images: evaluate(model, data, attacks, sorted eps, steps=, batch_size=, seed=)
        with batches of ceil(samples / batches), as `fastadv eval` runs it: with `defense` (a
        spec of its --defense, or "none") on the bare model and behind the defence, with
        `adaptive` the adaptive run too (`eot_samples`: its --eot-samples). `progress` shows
        evaluate's progress bar (the page tracks it)."""
        if not attacks:
            raise ValueError("attacks: choose at least one attack")
        if not eps:
            raise ValueError("eps: give at least one value")
        eps = sorted(dict.fromkeys(float(e) for e in eps))
        samples = min(int(samples), self.explorer.images.shape[0])
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        key = self.key(attacks, eps, steps, samples, seed, defense, adaptive, eot_samples)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._done:
                curve = self._done[key]
                return Curve(curve.report, curve.report_path, curve.plot_path, cached=True)
            curve = self._compute(list(attacks), eps, steps, samples, seed, defense, bool(adaptive), int(eot_samples),
                                  progress)  # fmt: skip
            self._done[key] = curve
            return curve

    def _compute(self, attacks: list[str], eps: list[float], steps: int, samples: int, seed: int, defense: str,
                 adaptive: bool, eot_samples: int, progress: bool) -> Curve:  # fmt: skip
        explorer = self.explorer
        # checked as evaluate checks a pair of tensors, with the data's class names for the report
        data = as_selection("data", (explorer.images[:samples], explorer.labels[:samples]))
        data.source.classes = explorer.class_names
        run_evaluation = functools.partial(evaluate, attacks=attacks, eps=eps, steps=steps, seed=seed,
                                           batch_size=math.ceil(samples / self.batches), progress=progress)  # fmt: skip
        specs = [] if defense == NO_DEFENSE else [defense]
        report = evaluate_defenses(self.model, data, run_evaluation, specs, device=explorer.device, seed=seed,
                                   adaptive=adaptive, eot_samples=eot_samples)  # fmt: skip
        report["model"], report["data"] = explorer.model_name, explorer.data_name  # as fastadv eval writes
        self.computed += 1
        folder = os.path.join(self.folder, f"curve-{len(self._done)}")
        os.makedirs(folder, exist_ok=True)
        report_path, plot_path = os.path.join(folder, "report.json"), os.path.join(folder, "robustness.png")
        write_json(report_path, report)
        from ..evaluation.plots import plot_defenses, plot_robustness

        plot_robustness(report, plot_path)
        if "comparison" in report:  # a defence or an adaptive run: the bars fastadv eval draws
            plot_path = os.path.join(folder, "defenses.png")
            plot_defenses(report["comparison"], plot_path)
        return Curve(report, report_path, plot_path, cached=False)
