"""The defences the page offers: "none" and the input transformations of fastadv.defenses, each
written as `fastadv eval --defense` takes it and built by the same parser (parse_defense), so the
page, the command line and a Python call name one defence alike.

The parameters are those the project measures its defences with (benchmarks/defenses.py:
BitDepth(5), JPEG(75), MedianFilter(3)) and, for random resize-and-pad, the parser's own default
("resize" = resize:0.8). `fastadv demo --defense SPEC` adds any other spec to the list.
"""

from __future__ import annotations

import torch

from ..defenses import Defended, parse_defense

NO_DEFENSE = "none"
DEFENSES = ("bits:5", "jpeg:75", "median:3", "resize")


def label(spec: str) -> str:
    """What the picker shows for `spec`: the spec and the transforms it builds, in order."""
    if spec == NO_DEFENSE:
        return "none (the model alone)"
    return f"{spec}: {' then '.join(str(t) for t in parse_defense(spec))}"


def choices(preselected: str | None = None) -> list[tuple[str, str]]:
    """(label, spec) pairs for the picker: "none", DEFENSES, and `preselected` when it is another spec."""
    specs = [NO_DEFENSE, *DEFENSES]
    if preselected and preselected not in specs:
        specs.append(preselected)
    return [(label(spec), spec) for spec in specs]


def defended(model: torch.nn.Module, spec: str, seed: int, device: torch.device) -> torch.nn.Module:
    """`model` behind the defence `spec` (the model itself for "none"): `Defended(model,
    parse_defense(spec, generator))`, the random transforms drawing from a generator on `device`
    seeded with `seed`, as `fastadv eval --defense SPEC --seed SEED` builds it."""
    if spec == NO_DEFENSE:
        return model
    return Defended(model, parse_defense(spec, torch.Generator(device=device).manual_seed(int(seed))))
