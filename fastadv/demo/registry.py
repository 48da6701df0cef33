"""The attacks the explorer offers: one line each, built with fastadv's own classes.

Adding an attack is one entry of `ATTACKS`: its label in the page, its name in
`fastadv.evaluate.ATTACKS` (for the robustness-curve tab; None keeps it out of that tab), its
norm (the slider's scale), whether it takes steps and alpha, whether it finds its own distance
(a budget it is judged against, as `evaluate` judges DeepFool and CW), and how to build it (the
options of an adaptive attack, `adaptive` and `eot_samples`, are added by `AttackChoice.build`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..attacks import CW, FGSM, MIFGSM, PGD, PGDL2, Attack, DeepFool, Square


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
    """One attack of the page (see the module's doc): the fastadv class `build` makes."""

    attack_class: type[Attack]
    curve_name: str | None
    norm: str  # "linf" or "l2"
    iterative: bool
    minimal: bool
    make: Callable[..., Attack]  # (model, settings, **adaptive options)

    @property
    def targeted_ok(self) -> bool:
        return "targeted" in self.attack_class.supported_options

    @property
    def eot_ok(self) -> bool:
        return "eot_samples" in self.attack_class.supported_options

    def build(self, model: torch.nn.Module, settings: Settings) -> Attack:
        """The attack on `model` with `settings`: ``adaptive=True`` when adaptive, and
        ``eot_samples`` when more than one and the attack takes it, as `fastadv.evaluate` adds them."""
        options = {"adaptive": True} if settings.adaptive else {}
        if settings.adaptive and settings.eot_samples > 1 and self.eot_ok:
            options["eot_samples"] = settings.eot_samples
        return self.make(model, settings, **options)


# fmt: off
ATTACKS: dict[str, AttackChoice] = {
    "FGSM": AttackChoice(FGSM, "fgsm", "linf", False, False,
                         lambda m, s, **o: FGSM(m, eps=s.eps, targeted=s.targeted, **o)),
    "PGD": AttackChoice(PGD, "pgd", "linf", True, False,
                        lambda m, s, **o: PGD(m, eps=s.eps, alpha=s.alpha, steps=s.steps, targeted=s.targeted,
                                               generator=s.generator, **o)),
    "MI-FGSM": AttackChoice(MIFGSM, "mifgsm", "linf", True, False,
                            lambda m, s, **o: MIFGSM(m, eps=s.eps, alpha=s.alpha, steps=s.steps, targeted=s.targeted,
                                                         **o)),
    "PGD-L2": AttackChoice(PGDL2, "pgd-l2", "l2", True, False,
                           lambda m, s, **o: PGDL2(m, eps=s.eps, alpha=s.alpha, steps=s.steps, targeted=s.targeted,
                                                    generator=s.generator, **o)),
    "DeepFool": AttackChoice(DeepFool, "deepfool", "l2", True, True,
                             lambda m, s, **o: DeepFool(m, steps=s.steps, **o)),
    # evaluate's CW settings (fastadv.evaluate.ATTACKS["cw"])
    "CW": AttackChoice(CW, "cw", "l2", True, True,
                       lambda m, s, **o: CW(m, steps=s.steps, lr=0.05, binary_search_steps=5, targeted=s.targeted,
                                             **o)),
    # score-based, no gradients; 1000 queries keep a slider move interactive (the curve tab runs
    # evaluate's "square", AutoAttack's 5000)
    "Square (1000 queries)": AttackChoice(Square, "square", "linf", False, False,
                                          lambda m, s, **o: Square(m, eps=s.eps, n_queries=1000, targeted=s.targeted,
                                                                    generator=s.generator, **o)),
}
# fmt: on
