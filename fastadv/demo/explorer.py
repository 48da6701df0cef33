"""The explorer's work, without the web page: the data and model it shows, one attack on one
image (exactly fastadv's API, seeded), optionally behind a defence, and the numbers the page prints.

`Explorer.attack` is what a slider move runs; `tests/app/test_demo.py` checks that its numbers equal
a plain call of the fastadv attack (on `fastadv.defenses.Defended(model, ...)` when a defence is
chosen) with the same settings and seed."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass

import torch

from ..attacks.model_mode import attack_mode
from ..checkpoint import fingerprint
from ..evaluation import within_budget
from .defense_choices import NO_DEFENSE, defended
from .registry import ATTACKS, AttackChoice, Settings

TOP = 5  # classes shown before and after


@dataclass(frozen=True)
class Picture:
    """The image being attacked: [C, H, W] in [0, 1], its true class (None for an upload: the
    model's clean prediction is attacked), and where it comes from (shown in the page)."""

    image: torch.Tensor
    label: int | None
    source: str


@dataclass(frozen=True)
class Outcome:
    """One attack on one image: the clean and adversarial images [C, H, W], the class attacked
    (the true class, or the target when targeted), both predictions and probability vectors,
    success (for the attacks that find their own distance: fooled within the budget eps, as
    `fastadv.evaluate` counts them), the perturbation's L-inf, L2 and L0 norms, the attack's
    time in seconds, and the model attacked: the defence (a spec of `fastadv eval --defense`, or
    "none"; the predictions are then the defended model's), whether the attack was adaptive and
    the EOT draws its gradient averaged (1: none)."""

    clean: torch.Tensor
    adv: torch.Tensor
    attacked_class: int
    clean_probs: torch.Tensor
    adv_probs: torch.Tensor
    success: bool
    linf: float
    l2: float
    l0: int
    seconds: float
    defense: str = NO_DEFENSE
    adaptive: bool = False
    eot_samples: int = 1

    @property
    def clean_pred(self) -> int:
        return int(self.clean_probs.argmax())

    @property
    def adv_pred(self) -> int:
        return int(self.adv_probs.argmax())

    @property
    def delta(self) -> torch.Tensor:
        return self.adv - self.clean


class Explorer:
    """The model (in eval mode, on its device) and the data (images [N, C, H, W] in [0, 1],
    labels [N]) the page shows; `model_name`, `data_name` and `class_names` (the data's, by
    label; None when it names none) go into the curve's reports as `fastadv eval` writes them."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                 model_name: str = "model", data_name: str = "data",
                 class_names: list[str] | None = None) -> None:  # fmt: skip
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be [N, C, H, W] with N >= 1, got shape {tuple(images.shape)}")
        if not bool(((images >= 0) & (images <= 1)).all()):  # NaN fails both
            raise ValueError("images must lie in [0, 1] (no NaN or infinite values)")
        self.model, self.images, self.labels = model, images, labels.long()
        self.model_name, self.data_name = model_name, data_name
        self.class_names = None if class_names is None else list(class_names)
        self.device = next(iter(model.parameters()), images).device
        with attack_mode(model, "eval"), torch.no_grad():
            self.classes = int(model(images[:1].to(self.device)).shape[1])
        self.model_id = fingerprint(model.state_dict().items())  # what the curves' cache is keyed by
        # one attack at a time: an attack turns the parameters' requires_grad off and back on,
        # which two overlapping attacks on one model would scramble
        self._busy = threading.Lock()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def eps_max(self, norm: str) -> float:
        """The slider's range from the data's scale: L-inf 0.3 for one-channel images such as
        the digits, 16/255 for colour ones; L2 the L-inf range times sqrt(pixels) / 2."""
        linf = 0.3 if self.shape[0] == 1 else 16 / 255
        return linf if norm == "linf" else round(linf * math.sqrt(math.prod(self.shape)) / 2, 2)

    def picture(self, index: int) -> Picture:
        if not 0 <= index < self.images.shape[0]:
            raise ValueError(f"image index must be in [0, {self.images.shape[0] - 1}], got {index}")
        return Picture(self.images[index], int(self.labels[index]), f"test image #{index}")

    def probabilities(self, image: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """float32 [K]: the softmax of `model` (default: the explorer's) for one image [C, H, W]
        (the model left as it was)."""
        model = self.model if model is None else model
        with attack_mode(model, "eval"), torch.no_grad():
            logits = model(image.unsqueeze(0).to(self.device)).float()
        if logits.dim() != 2 or logits.shape[0] != 1:
            raise ValueError(f"model: expected logits [1, K], got shape {tuple(logits.shape)}")
        if not bool(logits.isfinite().all()):
            raise ValueError("model: its logits on this image are not finite")
        return logits.softmax(1)[0].cpu()

    def attack(self, picture: Picture, attack: str, eps: float, *, steps: int = 20, alpha: float = 0.25,
               targeted: bool = False, target: int = 0, seed: int = 0, defense: str = NO_DEFENSE,
               adaptive: bool = False, eot_samples: int = 1) -> Outcome:  # fmt: skip
        """Runs `attack` (a name of ATTACKS) on the picture: `ATTACKS[attack].build(model,
        Settings(eps, alpha * eps, steps, targeted, generator seeded with seed, adaptive,
        eot_samples))`, then `.run`. alpha is a fraction of eps. Untargeted, the true class is
        attacked (the model's clean class for an upload); targeted, `target`.

        defense: a spec of `fastadv eval --defense` ("bits:5", "jpeg:75,bits:5") or "none": the
        model attacked is then `fastadv.defenses.Defended(model, parse_defense(defense,
        generator))`, its random transforms drawing from their own generator seeded with `seed`
        (as `fastadv eval --defense SPEC --seed SEED` seeds it). That one defended model computes,
        in this order, the clean probabilities, the attack and the adversarial probabilities, so
        a random defence draws for each in turn, as a Python call in that order does.
        adaptive: the attack made with ``adaptive=True`` (BPDA through the transforms) and, as
        `fastadv.evaluate` does, `eot_samples` gradients per step unless the model attacked
        declares itself deterministic (`randomized` False: a defence without random transforms)."""
        choice = ATTACKS[attack]
        if targeted and not choice.targeted_ok:
            raise ValueError(f"{attack} has no targeted mode")
        if targeted and not 0 <= target < self.classes:
            raise ValueError(f"target must be a class in [0, {self.classes - 1}], got {target}")
        if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
            raise ValueError(f"eot_samples must be an int >= 1, got {eot_samples!r}")
        model = defended(self.model, defense, seed, self.device)  # a bad spec: ValueError naming it
        # as evaluate: EOT only for an adaptive attack on a model not declared deterministic
        eot = eot_samples if adaptive and getattr(model, "randomized", True) else 1
        with self._busy:
            outcome = self._attack(model, picture, choice, eps, steps, alpha, targeted, target, seed, bool(adaptive),
                                   eot)  # fmt: skip
        return dataclasses.replace(outcome, defense=defense, adaptive=bool(adaptive),
                                   eot_samples=eot if choice.eot_ok else 1)  # fmt: skip

    def _attack(self, model: torch.nn.Module, picture: Picture, choice: AttackChoice, eps: float, steps: int,
                alpha: float, targeted: bool, target: int, seed: int, adaptive: bool, eot: int) -> Outcome:  # fmt: skip
        clean = picture.image.to(self.device)
        clean_probs = self.probabilities(clean, model)
        attacked = target if targeted else picture.label if picture.label is not None else int(clean_probs.argmax())
        generator = torch.Generator(device=self.device).manual_seed(seed)
        settings = Settings(float(eps), float(alpha) * float(eps), int(steps), bool(targeted), generator, adaptive, eot)
        start = time.perf_counter()
        result = choice.build(model, settings).run(clean.unsqueeze(0), torch.tensor([attacked], device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        adv = result.adv[0]
        success = bool(result.success[0])
        if choice.minimal:  # beyond the budget the sample counts as not fooled, as in evaluate
            success = success and bool(within_budget(adv.unsqueeze(0), clean.unsqueeze(0), eps)[0])
        delta = (adv.float() - clean.float()).flatten()
        return Outcome(clean.cpu(), adv.detach().cpu(), attacked, clean_probs, self.probabilities(adv, model), success,
                       float(delta.abs().max()), float(delta.norm()), int((delta != 0).sum()), seconds)  # fmt: skip
