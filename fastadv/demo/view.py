"""What the page shows of an Outcome: pictures (upscaled with nearest so small images such as the
16x16 digits stay visible), the top classes, and the numbers as one Markdown table. The browser
test reads the numbers back from this table, so its format is the page's contract."""

from __future__ import annotations

import math

import numpy as np
import torch

from .defense_choices import NO_DEFENSE, label
from .explorer import TOP, Outcome

DISPLAY_SIZE = 192  # the shorter side of a shown picture, at least, in pixels


FRAME = 6  # pixels of the frame around the perturbation picture
FRAME_COLOUR = (96, 96, 160)  # neither white nor black nor grey: the picture's +eps and -eps stay visible


def picture(image: torch.Tensor, *, frame: bool = False) -> np.ndarray:
    """uint8 [H', W', 3] of an image [C, H, W] in [0, 1], upscaled by an integer factor with
    nearest (a pixel stays a square); with `frame`, inside a FRAME-pixel border of FRAME_COLOUR
    (the perturbation's white +eps pixels would otherwise vanish into the page's white panel)."""
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    factor = max(1, math.ceil(DISPLAY_SIZE / min(array.shape[:2])))
    array = array.repeat(factor, axis=0).repeat(factor, axis=1)
    if frame:
        framed = np.empty((array.shape[0] + 2 * FRAME, array.shape[1] + 2 * FRAME, 3), dtype=np.uint8)
        framed[...] = FRAME_COLOUR
        framed[FRAME:-FRAME, FRAME:-FRAME] = array
        array = framed
    return np.ascontiguousarray(array)


def perturbation(delta: torch.Tensor) -> torch.Tensor:
    """The perturbation amplified to the full range: 0.5 + 0.5 * delta / max|delta| (mid-grey
    where a pixel did not move; all grey when nothing moved)."""
    largest = float(delta.abs().max()) if delta.numel() else 0.0
    return 0.5 + 0.5 * delta / largest if largest > 0 else torch.full_like(delta, 0.5)


def top_classes(probs: torch.Tensor, names: list[str]) -> dict[str, float]:
    """{class name: probability} of the TOP most likely classes (what gradio's Label shows)."""
    values, indices = probs.topk(min(TOP, probs.numel()))
    return {names[int(i)]: float(v) for v, i in zip(values, indices, strict=True)}


def summary(outcome: Outcome, names: list[str], *, attack: str, eps: float, norm: str, targeted: bool,
            minimal: bool) -> str:  # fmt: skip
    """The numbers of one attack as a Markdown table (probabilities to 4 decimals, norms to 6
    significant digits, time in ms), below the line that says which model was attacked."""
    clean, adv = outcome.clean_pred, outcome.adv_pred
    goal = f"target class {names[outcome.attacked_class]}" if targeted else f"class {names[outcome.attacked_class]}"
    budget = f"L2 budget eps = {eps:.6g}" if minimal else f"eps = {eps:.6g} ({'L-inf' if norm == 'linf' else 'L2'})"
    rows = [
        attacked_model(outcome),
        "",
        "| | clean | adversarial |",
        "| --- | --- | --- |",
        f"| prediction | {names[clean]} | {names[adv]} |",
        f"| probability of the prediction | {float(outcome.clean_probs[clean]):.4f} | "
        f"{float(outcome.adv_probs[adv]):.4f} |",
        f"| probability of {goal} | {float(outcome.clean_probs[outcome.attacked_class]):.4f} | "
        f"{float(outcome.adv_probs[outcome.attacked_class]):.4f} |",
    ]
    norms = [
        "",
        "| attack | success | L-inf | L2 | L0 | time |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {attack}{' targeted' if targeted else ''}, {budget} | {'yes' if outcome.success else 'no'} | "
        f"{outcome.linf:.6g} | {outcome.l2:.6g} | {outcome.l0} | {1000 * outcome.seconds:.1f} ms |",
    ]
    return "\n".join(rows + norms)


def attacked_model(outcome: Outcome) -> str:
    """One line: the defence the model was behind (its predictions are the defended model's) and
    whether the attack was adaptive."""
    if outcome.defense == NO_DEFENSE:
        model = "**defence:** none (the model alone)"
    else:
        model = f"**defence:** {label(outcome.defense)} (the predictions are the defended model's)"
    if not outcome.adaptive:
        return f"{model} · **attack:** not adaptive"
    eot = f", EOT over {outcome.eot_samples} draws" if outcome.eot_samples > 1 else ""
    return f"{model} · **attack:** adaptive (BPDA through the transforms{eot})"
