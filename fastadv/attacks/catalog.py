"""The attack catalogue: every attack fastadv runs by name, as data, in one place.

- `ATTACKS`: the attacks `evaluate` and `fastadv eval --attacks` run by name, which the demo
  (`fastadv/demo/registry.py`) and the attack benchmark (`fastadv/bench/attack.py`) build too.
  An entry holds the norm, the class, its settings with eps and steps as formulas (`EPS`,
  `OfEps`, `STEPS`), where its randomness comes from, whether it is a minimal-norm attack, which
  keyword takes an evaluation's EOT draws, and which attack an adaptive evaluation adds after it.
- `AUTOATTACK_STAGES`: the stages `AutoAttack` builds, at the original's budgets (100
  iterations, restarts per version, n_classes - 1 = 9 target classes, 5000 queries). Their names
  are AutoAttack's: "apgd-ce" here is not `ATTACKS["apgd-ce"]` (evaluate's, at its `steps` and
  one restart); the table writes a stage "autoattack:apgd-ce".

`table()` is every default in one markdown table (docs/evaluation-and-training.md holds it; a
test keeps the two equal), `describe_attacks()` the same for `fastadv eval --help`. Adding an
attack is one entry here.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .apgd import APGD
from .apgdt import APGDT
from .autoattack import VERSIONS, AutoAttack, AutoAttackResult
from .base import OPTIONS, Attack
from .cw import CW
from .deepfool import DeepFool
from .fab import FAB
from .fgsm import FGSM
from .mifgsm import MIFGSM
from .pgd import PGD
from .pgdl2 import PGDL2
from .square import Square


@dataclass(frozen=True)
class OfEps:
    """A setting that is `fraction` times the eps it is built at (PGD's step size: eps / 4)."""

    fraction: float

    def __str__(self) -> str:
        return "eps" if self.fraction == 1 else f"eps/{1 / self.fraction:g}"


EPS = OfEps(1.0)


@dataclass(frozen=True)
class Given:
    """A setting that one of the builder's own arguments gives: `name` (evaluate's steps;
    AutoAttack's norm, steps, n_queries, n_classes for its stages), shown as `shown`."""

    name: str
    shown: str

    def __str__(self) -> str:
        return self.shown


STEPS = Given("steps", "steps")  # evaluate's `steps` (--steps)


@dataclass(frozen=True)
class PerVersion:
    """A stage setting that depends on AutoAttack's version: `default`, or the value `versions`
    gives that version."""

    default: Any
    versions: dict = field(default_factory=dict)

    def of(self, version: str) -> Any:
        return self.versions.get(version, self.default)

    def __str__(self) -> str:
        by_value: dict[Any, list[str]] = {}
        for version, value in self.versions.items():
            by_value.setdefault(value, []).append(version)
        return f"{self.default}" + "".join(f" ({', '.join(v)}: {value})" for value, v in by_value.items())


def _value(setting: Any, given: dict) -> Any:
    """A setting's value where `given` holds the builder's arguments (eps, steps, version, ...)."""
    if isinstance(setting, OfEps):
        return given["eps"] * setting.fraction
    if isinstance(setting, Given):
        return given[setting.name]
    if isinstance(setting, PerVersion):
        return setting.of(given["version"])
    return setting


def _defaults(attack_class: type, skip: Sequence[str]) -> dict:
    """The class's defaults of the settings not in `skip` (None defaults, which the class
    derives from others or from the model, are left out)."""
    skip = {"self", "model", "verbose", "log", "n_classes", "seed", *skip}
    return {name: p.default for name, p in inspect.signature(attack_class.__init__).parameters.items()
            if name not in skip and p.default is not inspect.Parameter.empty and p.default is not None
            and p.kind is not inspect.Parameter.VAR_KEYWORD}  # fmt: skip


@dataclass(frozen=True)
class AttackEntry:
    """One attack of `evaluate`, as data: its norm, the class that runs it and the keyword
    settings it is built with (values, `EPS` or `OfEps`, `STEPS`); `seeding` says where its
    randomness comes from ("generator": a generator seeded per (seed, batch, attack, eps);
    "seed": a number drawn from that generator, as AutoAttack takes it; None: deterministic).
    The class's own defaults fill every setting not given: `used` lists them all, and the
    report records them per row, so every number can be reproduced from the report alone.

    minimal_norm: the attack finds its own distance (DeepFool, CW): a sample counts as fooled at
    eps only if its L2 distance is <= eps. eot: the keyword that takes an evaluation's
    `eot_samples` (gradients averaged over draws: "eot_samples" for the gradient loop's attacks,
    "eot_iter" for APGD's), None where EOT does not apply. adaptive_adds: the attack an adaptive
    evaluation adds after this one when not given already (an L-inf attack on cross-entropy gets
    the margin-loss PGD: a saturated softmax, as defensive distillation's, hides the
    cross-entropy gradient but not the logits')."""

    norm: str
    attack_class: type
    settings: dict
    seeding: str | None = None
    note: str = ""
    minimal_norm: bool = False
    eot: str | None = None
    adaptive_adds: str | None = None

    def arguments(self, eps: float, steps: int) -> dict:
        """The keyword arguments the class is built with at `eps` and `steps`."""
        return {k: _value(v, {"eps": eps, "steps": steps}) for k, v in self.settings.items()}

    def build(self, model, eps: float, steps: int, generator: torch.Generator | None = None, /, **options):
        """The attack at `eps` (`steps` for the iterative ones), seeded from `generator` (None:
        the class's own seeding); `options` are added to the settings, and win over them (the
        arguments before them are positional only: options may name `steps`, as AutoAttack's).
        AutoAttack comes as a `WholeBatch`."""
        arguments = self.arguments(eps, steps)
        if self.seeding == "generator":
            arguments["generator"] = generator
        elif self.seeding == "seed" and generator is not None:
            arguments["seed"] = _seed(generator)
        arguments.update(options)
        if self.attack_class is AutoAttack:  # every sample evaluate gives it in one chunk
            return WholeBatch(AutoAttack(model, **arguments))
        return self.attack_class(model, **arguments)

    def defaults(self) -> dict:
        """The class's defaults of the settings `settings` does not give (None defaults, which
        the class derives from others or from the model, are left out)."""
        return _defaults(self.attack_class, tuple(self.settings))

    def used(self, model, eps: float, steps: int, options: dict) -> dict:
        """Every setting of one run at `eps` (JSON-ready), read from the attack as built on
        `model`: the class, its own settings (defaults included), the options evaluate passed
        (backend, adaptive, EOT draws, ...) and the seeding; AutoAttack's per stage."""
        attack = self.build(model, eps, steps, torch.Generator(), **options)
        inner = attack.attack if isinstance(attack, WholeBatch) else attack
        if isinstance(inner, AutoAttack):
            own = {"version": inner.version, "norm": inner.norm, "eps": inner.eps,
                   "stages": {name: {"class": type(stage).__name__, **_plain(stage.settings())}
                              for name, stage in inner.stages}}  # fmt: skip
        else:
            own = _plain(inner.settings())
        seeded = {"generator": "random draws from a generator seeded by (seed, batch, attack, eps)",
                  "seed": "its seed drawn per batch from a generator seeded by (seed, batch, attack, eps)",
                  None: "deterministic"}[self.seeding]  # fmt: skip
        return {"class": self.attack_class.__name__, **own, **_plain(options), "randomness": seeded}

    def describe(self) -> str:
        """One line for --help: the class and its settings (eps and steps as formulas)."""
        shown = ", ".join(f"{k}={v}" for k, v in {**self.defaults(), **self.settings}.items())
        return f"{self.attack_class.__name__}({shown})" + (f" [{self.note}]" if self.note else "")


@dataclass(frozen=True)
class StageEntry:
    """One stage of `AutoAttack`, as data: the class and its settings (values, `Given` for
    AutoAttack's own arguments, `PerVersion` for what its versions change). AutoAttack gives
    every stage its norm, eps and seed and its options (bounds, mean/std, amp, ...); the options
    win over a stage's own default of a shared option (APGD's early_stop=True). int_seed: the
    class takes only an int seed (FAB): with AutoAttack's seed=None, one drawn from the global
    generator."""

    attack_class: type
    settings: dict
    int_seed: bool = False

    def build(self, model: Any, *, norm: str, eps: float, seed: int | None, version: str, steps: int,
              n_queries: int, n_classes: int, overrides: dict, options: dict) -> Attack:  # fmt: skip
        """The stage on `model` for an AutoAttack of these arguments; `overrides` replace
        settings (AutoAttackLite's restarts)."""
        given = {"version": version, "steps": steps, "n_queries": n_queries, "n_classes": n_classes,
                 "n_target_classes": n_classes - 1}  # fmt: skip
        arguments = {k: _value(v, given) for k, v in self.settings.items()} | overrides
        shared = {"norm": norm, "eps": eps, "seed": seed, **options}
        if "early_stop" not in self.attack_class.supported_options:  # (FAB, Square: they stop per sample anyway)
            shared.pop("early_stop", None)
        arguments = {k: v for k, v in arguments.items() if not (k in OPTIONS and k in shared)}
        if self.int_seed and seed is None:
            shared["seed"] = int(torch.randint(0, 2**62, (1,)))
        return self.attack_class(model, **arguments, **shared)

    def describe(self) -> str:
        """The class and its settings, AutoAttack's arguments by name with their defaults."""
        own = _defaults(self.attack_class, (*self.settings, "norm", "eps", "early_stop"))
        shown = ", ".join(f"{k}={v}" for k, v in {**own, **self.settings}.items())
        return f"{self.attack_class.__name__}({shown})"


# name -> how evaluate builds it. eps / 4 with `steps` steps reaches the ball's edge from a
# random start in 8 steps, and the later steps search along it.
_CE_LINF = {"adaptive_adds": "pgd-margin"}  # (see AttackEntry.adaptive_adds)
ATTACKS: dict[str, AttackEntry] = {
    "fgsm": AttackEntry("linf", FGSM, {"eps": EPS}, eot="eot_samples", **_CE_LINF),
    "pgd": AttackEntry(
        "linf", PGD, {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS}, "generator", eot="eot_samples", **_CE_LINF
    ),  # fmt: skip
    # Carlini and Wagner's logit margin: what defeats defensive distillation's saturated softmax
    "pgd-margin": AttackEntry(
        "linf",
        PGD,
        {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS, "loss": "margin"},
        "generator",
        eot="eot_samples",
    ),  # fmt: skip
    "pgd-l2": AttackEntry(
        "l2", PGDL2, {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS}, "generator", eot="eot_samples"
    ),  # fmt: skip
    "mifgsm": AttackEntry(
        "linf", MIFGSM, {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS}, eot="eot_samples", **_CE_LINF
    ),  # fmt: skip
    # AutoAttack's first two attacks at evaluate's steps (its stages: autoattack:apgd-ce, autoattack:apgd-t)
    "apgd-ce": AttackEntry(
        "linf", APGD, {"eps": EPS, "steps": STEPS, "loss": "ce"}, "generator", eot="eot_iter", **_CE_LINF
    ),  # fmt: skip
    "apgd-dlr": AttackEntry("linf", APGD, {"eps": EPS, "steps": STEPS, "loss": "dlr"}, "generator", eot="eot_iter"),
    "apgd-t": AttackEntry("linf", APGDT, {"eps": EPS, "steps": STEPS}, "generator", eot="eot_iter"),
    # score-based, as AutoAttack's last stage (5000 queries; `steps` does not apply)
    "square": AttackEntry("linf", Square, {"eps": EPS, "resc_schedule": False}, "generator", "steps do not apply"),
    # AutoAttack's standard version, all four stages at their own settings (`steps` does not apply)
    "autoattack": AttackEntry(
        "linf",
        AutoAttack,
        {"norm": "Linf", "eps": EPS},
        "seed",
        f"the stages {', '.join(f'autoattack:{s}' for s in VERSIONS['standard'])} at AutoAttack's budgets; "
        "steps do not apply",
    ),
    # minimal-perturbation attacks: a sample counts as fooled at eps only if its L2 distance is <= eps
    "deepfool": AttackEntry(
        "l2", DeepFool, {"steps": STEPS}, None, "fooled at eps if its L2 distance <= eps", minimal_norm=True
    ),  # fmt: skip
    "cw": AttackEntry(
        "l2",
        CW,
        {"steps": STEPS, "lr": 0.05, "binary_search_steps": 5},
        None,
        "fooled at eps if its L2 distance <= eps",
        minimal_norm=True,
    ),  # fmt: skip
}

# AutoAttack's arguments its stages take, shown with their defaults
_AA_STEPS = Given("steps", "steps (100)")
_QUERIES = Given("n_queries", "n_queries (5000)")
_CLASSES = Given("n_classes", "n_classes (10)")
_TARGETS = Given("n_target_classes", "n_classes-1 (9)")
# the original's restarts and EOT per version ("custom": its attacks as constructed)
_RESTARTS = PerVersion(1, {"plus": 5, "custom": 5})
_EOT_ITER = PerVersion(1, {"rand": 20})
# name (AutoAttack's) -> the stage AutoAttack builds, with the original's settings. Every stage
# AutoAttack may run (version="custom": any of them) is here.
AUTOATTACK_STAGES: dict[str, StageEntry] = {
    "apgd-ce": StageEntry(
        APGD, {"steps": _AA_STEPS, "n_restarts": _RESTARTS, "loss": "ce", "eot_iter": _EOT_ITER, "early_stop": True}
    ),  # fmt: skip
    "apgd-dlr": StageEntry(
        APGD, {"steps": _AA_STEPS, "n_restarts": _RESTARTS, "loss": "dlr", "eot_iter": _EOT_ITER, "early_stop": True}
    ),  # fmt: skip
    "apgd-t": StageEntry(
        APGDT, {"steps": _AA_STEPS, "n_restarts": 1, "n_target_classes": _TARGETS, "early_stop": True}
    ),  # fmt: skip
    "fab": StageEntry(
        FAB,
        {
            "steps": _AA_STEPS,
            "n_restarts": _RESTARTS,
            "alpha_max": 0.1,
            "eta": 1.05,
            "beta": 0.9,
            "multi_targeted": False,
            "n_classes": _CLASSES,
        },
        int_seed=True,
    ),  # fmt: skip
    "fab-t": StageEntry(
        FAB,
        {
            "steps": _AA_STEPS,
            "n_restarts": 1,
            "alpha_max": 0.1,
            "eta": 1.05,
            "beta": 0.9,
            "multi_targeted": True,
            "n_classes": _CLASSES,
        },
        int_seed=True,
    ),  # fmt: skip
    "square": StageEntry(Square, {"n_queries": _QUERIES, "n_restarts": 1, "p_init": 0.8, "resc_schedule": False}),
}


def _plain(settings: dict) -> dict:
    """Settings as JSON values: a tensor as a number (or a list), a dtype by name."""

    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.item() if value.numel() == 1 else value.tolist()
        return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value

    return {k: plain(v) for k, v in settings.items()}


def describe_attacks() -> str:
    """The attacks and their settings, one "name: Class(settings)" each, then AutoAttack's stages
    as "autoattack:name: Class(settings)" (for --help)."""
    lines = [f"{name}: {entry.describe()}" for name, entry in ATTACKS.items()]
    lines += [f"autoattack:{name}: {stage.describe()}" for name, stage in AUTOATTACK_STAGES.items()]
    return "; ".join(lines)


def table() -> str:
    """Every attack of the catalogue and its settings as one markdown table: evaluate's attacks,
    then AutoAttack's stages ("autoattack:name")."""
    lines = ["| name | norm | class and settings (defaults included) | randomness | minimal-norm | EOT keyword | "
             "adaptive adds |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, entry in ATTACKS.items():
        cells = (name, entry.norm, entry.describe(), entry.seeding or "none", "yes" if entry.minimal_norm else "",
                 entry.eot or "", entry.adaptive_adds or "")  # fmt: skip
        lines.append("| " + " | ".join(f"`{c}`" if c and i in (0, 2) else c for i, c in enumerate(cells)) + " |")
    for name, stage in AUTOATTACK_STAGES.items():
        cells = (f"autoattack:{name}", "AutoAttack's", stage.describe(), "AutoAttack's seed", "", "", "")
        lines.append("| " + " | ".join(f"`{c}`" if c and i in (0, 2) else c for i, c in enumerate(cells)) + " |")
    return "\n".join(lines)


def adaptive_attacks(attacks: Sequence[str]) -> list[str]:
    """The attacks of an adaptive evaluation: `attacks`, then the attack each one's entry says an
    adaptive evaluation adds (`AttackEntry.adaptive_adds`), when not there already."""
    attacks = list(attacks)
    for name in list(attacks):
        added = ATTACKS[name].adaptive_adds if name in ATTACKS else None
        if added is not None and added not in attacks:
            attacks.append(added)
    return attacks


def attack_options(name: str, options: dict) -> dict:
    """The options of attack `name` in an evaluation: eot_samples goes to the keyword the
    entry names (`AttackEntry.eot`), and is dropped for the others."""
    options = dict(options)
    eot = options.pop("eot_samples", 1)
    if ATTACKS[name].eot is not None and eot > 1:
        options[ATTACKS[name].eot] = eot
    return options


def _seed(generator: torch.Generator) -> int:
    """A seed drawn from `generator`, for the attacks seeded by a number (AutoAttack's stages)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


@dataclass(frozen=True)
class WholeBatch:
    """AutoAttack on the samples evaluate gives it at once (its chunks are the evaluation's
    batches): `run` and the call take images and labels as AutoAttack's do."""

    attack: AutoAttack

    def run(self, images: torch.Tensor, labels: torch.Tensor, **hooks) -> AutoAttackResult:
        """hooks: on_progress, on_stage_progress, on_stage_end and resume, as AutoAttack.run takes them."""
        return self.attack.run(images, labels, batch_size=max(1, images.shape[0]), **hooks)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.run(images, labels).adv
