"""A model evaluated bare and behind each of some defences (input transformations written as
`fastadv eval --defense` takes them), and the rows that set non-adaptive and adaptive robust
accuracy side by side: what `fastadv eval --defense SPEC [--adaptive]` and the demo's curve tab
report."""

from __future__ import annotations

import torch

from ..defenses import Defended, parse_defense
from ..defenses.report import plain_rows

UNDEFENDED = "none"  # the bare model's name among the runs


def evaluate_defenses(model: torch.nn.Module, data, evaluate, specs, *, device: torch.device, seed: int,
                      adaptive: bool, eot_samples: int, state: str | None = None) -> dict:  # fmt: skip
    """What `fastadv eval [--defense SPEC ...] [--adaptive]` reports (`fastadv demo`'s curve tab
    runs it too): `evaluate` (fastadv.evaluation.evaluate with the caller's settings bound,
    taking model, data, adaptive, eot_samples and state_path) on the bare model alone when
    `specs` is empty; otherwise on the bare model and behind each defence of `specs` (random
    transforms seeded with `seed`, on `device`), each with its own state file (none when `state`
    is None), and the combined report: the undefended model's, and "defenses" (each run's
    report) and "comparison" (every defence's rows of fastadv.defenses.compare, named)."""
    if not specs:
        return evaluate(model, data, adaptive=adaptive, eot_samples=eot_samples, state_path=state)
    targets = [(UNDEFENDED, model)]
    for spec in specs:
        generator = torch.Generator(device=device).manual_seed(seed)  # where the images go
        targets.append((spec, Defended(model, parse_defense(spec, generator))))
    runs, rows = [], []
    for index, (name, target) in enumerate(targets):
        report = evaluate(target, data, adaptive=adaptive, eot_samples=eot_samples,
                          state_path=None if state is None else f"{state}.defense{index}")  # fmt: skip
        runs.append({"defense": name, **report})
        rows += [{"defense": name, **r} for r in (report["comparison"] if adaptive else plain_rows(report))]
    return {**runs[0], "defenses": runs, "comparison": rows}
