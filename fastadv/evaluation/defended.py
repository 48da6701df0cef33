"""`fastadv eval --defense SPEC [--adaptive]`: the model evaluated bare and behind each defence,
and the table that sets non-adaptive and adaptive robust accuracy side by side."""

from __future__ import annotations

import argparse
import os

import torch

from ..defenses import Defended, format_comparison, parse_defense
from ..defenses.report import plain_rows
from . import args as arg

UNDEFENDED = "none"


def defense(text: str) -> str:
    """An argparse type: a defence written as --defense takes it ("jpeg:75,bits:5"), checked."""
    try:
        parse_defense(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("defense: ")) from None
    return text


def add_arguments(p: argparse.ArgumentParser, eot_default: int) -> None:
    p.add_argument(
        "--defense", type=defense, action="append", default=None, metavar="SPEC",
        help="evaluate the model behind these input transformations too (repeatable: one defence each), e.g. "
        "jpeg:75,bits:5; names: bits:BITS, jpeg:QUALITY, median:SIZE, resize:MIN_SCALE (random resize and pad)",
    )  # fmt: skip
    p.add_argument(
        "--adaptive", action="store_true",
        help="also run the adaptive attacks (BPDA through the transforms, EOT over random draws, margin-loss PGD) "
        "and flag gradient masking where they find 10 points less robust accuracy",
    )  # fmt: skip
    p.add_argument(
        "--eot-samples", type=arg.positive_int, default=eot_default,
        help="with --adaptive: gradients averaged per step over draws of a random defence (default: %(default)s)",
    )  # fmt: skip


def evaluate_defenses(model: torch.nn.Module, data, evaluate, specs, *, device: torch.device, seed: int,
                      adaptive: bool, eot_samples: int, state: str | None = None) -> dict:  # fmt: skip
    """What `fastadv eval [--defense SPEC ...] [--adaptive]` reports (`fastadv demo`'s curve tab
    calls it too): `evaluate` (fastadv.evaluate.evaluate with the command's settings bound,
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


def print_and_plot(report: dict, folder: str, plots: bool) -> None:
    """The side-by-side table, and defenses.png."""
    print(format_comparison(report["comparison"]))
    if plots:
        from ..plots import plot_defenses

        plot_defenses(report["comparison"], os.path.join(folder, "defenses.png"))
