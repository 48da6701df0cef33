"""The attacks the explorer offers: each one an entry of the attack catalogue
(`fastadv.attacks.catalog.ATTACKS`), built as `evaluate` builds it, with the page's controls.

Adding an attack is one entry of `ATTACKS`: its label in the page, its name in the catalogue
(its norm, the slider's scale; whether it takes steps and alpha; whether it finds its own
distance, a budget it is judged against as `evaluate` judges DeepFool and CW; its class and
settings, all read from there; the robustness-curve tab runs that name), and the page's own
changes to the catalogue's settings, if any (the options of an adaptive attack, `adaptive` and
`eot_samples`, are added by `AttackChoice.build`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attacks import Attack
from ..attacks.catalog import ATTACKS as CATALOG
from ..attacks.catalog import STEPS, AttackEntry


@dataclass(frozen=True)
class Settings:
    """What the page's controls say: eps (the L-inf or L2 radius), alpha (the step size, in
    pixel units), steps, targeted, the generator of the random start (seeded per call), and
    whether the attack is adaptive (BPDA through a defence's transforms) with `eot_samples`
    gradients averaged per step (EOT, for the attacks that take it)."""

    eps: float
    alpha: float
    steps: int
    targeted: bool
    generator: torch.Generator
    adaptive: bool = False
    eot_samples: int = 1


@dataclass(frozen=True)
class AttackChoice:
    """One attack of the page (see the module's doc): the catalogue's entry `curve_name` with
    the page's `overrides` of its settings."""

    curve_name: str  # its name in the catalogue, and in the robustness-curve tab
    overrides: dict = field(default_factory=dict)

    @property
    def entry(self) -> AttackEntry:
        return CATALOG[self.curve_name]

    @property
    def attack_class(self) -> type[Attack]:
        return self.entry.attack_class

    @property
    def norm(self) -> str:  # "linf" or "l2"
        return self.entry.norm

    @property
    def iterative(self) -> bool:
        """It takes the page's steps."""
        return STEPS in self.entry.settings.values()

    @property
    def minimal(self) -> bool:
        return self.entry.minimal_norm

    @property
    def targeted_ok(self) -> bool:
        return "targeted" in self.attack_class.supported_options

    @property
    def eot_ok(self) -> bool:
        return "eot_samples" in self.attack_class.supported_options

    def build(self, model: torch.nn.Module, settings: Settings) -> Attack:
        """The attack on `model` with `settings`: the catalogue's entry at the page's eps and
        steps, its random start from the page's generator, the page's alpha where the entry sets
        one, targeted where the attack takes it; ``adaptive=True`` when adaptive, and
        ``eot_samples`` when more than one and the attack takes it, as `fastadv.evaluate` adds them."""
        page = {"alpha": settings.alpha} if "alpha" in self.entry.settings else {}
        if self.targeted_ok:
            page["targeted"] = settings.targeted
        options = {"adaptive": True} if settings.adaptive else {}
        if settings.adaptive and settings.eot_samples > 1 and self.eot_ok:
            options["eot_samples"] = settings.eot_samples
        return self.entry.build(model, settings.eps, settings.steps, settings.generator,
                                **{**page, **self.overrides, **options})  # fmt: skip


ATTACKS: dict[str, AttackChoice] = {
    "FGSM": AttackChoice("fgsm"),
    "PGD": AttackChoice("pgd"),
    "MI-FGSM": AttackChoice("mifgsm"),
    "PGD-L2": AttackChoice("pgd-l2"),
    "DeepFool": AttackChoice("deepfool"),
    "CW": AttackChoice("cw"),
    # score-based, no gradients; 1000 queries, the schedule rescaled to them, keep a slider move
    # interactive (the curve tab runs the catalogue's "square": AutoAttack's 5000, not rescaled)
    "Square (1000 queries)": AttackChoice("square", {"n_queries": 1000, "resc_schedule": True}),
}
