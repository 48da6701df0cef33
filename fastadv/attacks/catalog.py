"""The attack catalogue: every attack `fastadv eval`, `evaluate`, the demo and the benchmarks run
by name, as data (norm, class, settings with eps and steps as formulas, seeding), so every default
is visible in one table and printed by `--help`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .apgd import APGD
from .apgdt import APGDT
from .autoattack import AutoAttack, AutoAttackResult
from .cw import CW
from .deepfool import DeepFool
from .fgsm import FGSM
from .mifgsm import MIFGSM
from .pgd import PGD
from .pgdl2 import PGDL2
from .square import Square


@dataclass(frozen=True)
class OfEps:
    """A setting that is `fraction` times the evaluation's eps (PGD's step size: eps / 4)."""

    fraction: float

    def __str__(self) -> str:
        return "eps" if self.fraction == 1 else f"eps/{1 / self.fraction:g}"


EPS = OfEps(1.0)


class _Steps:
    """The evaluation's `steps` (--steps)."""

    def __repr__(self) -> str:
        return "steps"


STEPS = _Steps()


@dataclass(frozen=True)
class AttackEntry:
    """One attack of `evaluate`, as data: its norm, the class that runs it and the keyword
    settings it is built with (values, `EPS` or `OfEps`, `STEPS`); `seeding` says where its
    randomness comes from ("generator": a generator seeded per (seed, batch, attack, eps);
    "seed": a number drawn from that generator, as AutoAttack takes it; None: deterministic).
    The class's own defaults fill every setting not given: `used` lists them all, and the
    report records them per row, so every number can be reproduced from the report alone."""

    norm: str
    attack_class: type
    settings: dict
    seeding: str | None = None
    note: str = ""

    def arguments(self, eps: float, steps: int) -> dict:
        """The keyword arguments the class is built with at `eps` and `steps`."""

        def value(v):
            return eps * v.fraction if isinstance(v, OfEps) else steps if v is STEPS else v

        return {k: value(v) for k, v in self.settings.items()}

    def build(self, model, eps: float, steps: int, generator: torch.Generator, **options):
        """The attack at `eps` (`steps` for the iterative ones), seeded from `generator`."""
        arguments = {**self.arguments(eps, steps), **options}
        if self.seeding == "generator":
            arguments["generator"] = generator
        if self.attack_class is AutoAttack:  # every sample evaluate gives it in one chunk
            return _WholeBatch(AutoAttack(model, seed=_seed(generator), **arguments))
        return self.attack_class(model, **arguments)

    def defaults(self) -> dict:
        """The class's defaults of the settings `settings` does not give (None defaults, which
        the class derives from others or from the model, are left out)."""
        import inspect

        skip = {"self", "model", "verbose", "log", "n_classes", "seed", *self.settings}
        return {name: p.default for name, p in inspect.signature(self.attack_class.__init__).parameters.items()
                if name not in skip and p.default is not inspect.Parameter.empty and p.default is not None
                and p.kind is not inspect.Parameter.VAR_KEYWORD}  # fmt: skip

    def used(self, model, eps: float, steps: int, options: dict) -> dict:
        """Every setting of one run at `eps` (JSON-ready), read from the attack as built on
        `model`: the class, its own settings (defaults included), the options evaluate passed
        (backend, adaptive, EOT draws, ...) and the seeding; AutoAttack's per stage."""
        attack = self.build(model, eps, steps, torch.Generator(), **options)
        inner = attack.attack if isinstance(attack, _WholeBatch) else attack
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


# name -> how evaluate builds it. eps / 4 with `steps` steps reaches the ball's edge from a
# random start in 8 steps, and the later steps search along it.
ATTACKS: dict[str, AttackEntry] = {
    "fgsm": AttackEntry("linf", FGSM, {"eps": EPS}),
    "pgd": AttackEntry("linf", PGD, {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS}, "generator"),
    # Carlini and Wagner's logit margin: what defeats defensive distillation's saturated softmax
    "pgd-margin": AttackEntry(
        "linf", PGD, {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS, "loss": "margin"}, "generator"
    ),  # fmt: skip
    "pgd-l2": AttackEntry("l2", PGDL2, {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS}, "generator"),
    "mifgsm": AttackEntry("linf", MIFGSM, {"eps": EPS, "alpha": OfEps(0.25), "steps": STEPS}),
    # AutoAttack's first two stages: `attacks=["apgd-ce", "apgd-t"]` with the cascade
    "apgd-ce": AttackEntry("linf", APGD, {"eps": EPS, "steps": STEPS, "loss": "ce"}, "generator"),
    "apgd-dlr": AttackEntry("linf", APGD, {"eps": EPS, "steps": STEPS, "loss": "dlr"}, "generator"),
    "apgd-t": AttackEntry("linf", APGDT, {"eps": EPS, "steps": STEPS}, "generator"),
    # score-based, as AutoAttack's last stage (5000 queries; `steps` does not apply)
    "square": AttackEntry("linf", Square, {"eps": EPS, "resc_schedule": False}, "generator", "steps do not apply"),
    # AutoAttack's standard version, all four stages at their own settings (`steps` does not apply)
    "autoattack": AttackEntry(
        "linf",
        AutoAttack,
        {"norm": "Linf", "eps": EPS},
        "seed",
        "APGD-CE, APGD-T, FAB-T, Square at AutoAttack's budgets; steps do not apply",
    ),
    # minimal-perturbation attacks: a sample counts as fooled at eps only if its L2 distance is <= eps
    "deepfool": AttackEntry("l2", DeepFool, {"steps": STEPS}, None, "fooled at eps if its L2 distance <= eps"),
    "cw": AttackEntry(
        "l2",
        CW,
        {"steps": STEPS, "lr": 0.05, "binary_search_steps": 5},
        None,
        "fooled at eps if its L2 distance <= eps",
    ),
}


def _plain(settings: dict) -> dict:
    """Settings as JSON values: a tensor as a number (or a list), a dtype by name."""

    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.item() if value.numel() == 1 else value.tolist()
        return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value

    return {k: plain(v) for k, v in settings.items()}


def describe_attacks() -> str:
    """The attacks and their settings, one "name: Class(settings)" each (for --help)."""
    return "; ".join(f"{name}: {entry.describe()}" for name, entry in ATTACKS.items())


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


def attack_options(name: str, options: dict) -> dict:
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
