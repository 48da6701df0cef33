"""The argument types of the `fastadv` commands (argparse `type=` functions whose errors argparse
prints as one line, exit status 2), the error a command reports a bad input with (CliError), and
the defaults an option shares with the function it runs."""

from __future__ import annotations

import argparse
import functools
import inspect
import re
from collections.abc import Callable, Collection
from typing import Any

import torch

from .. import checks as check


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def defaults(fn: Callable) -> dict[str, Any]:
    """The defaults of `fn`'s parameters (a function, or a dataclass's fields): the one
    definition that a command's options share with the function it runs."""
    parameters = inspect.signature(fn).parameters.items()
    return {name: p.default for name, p in parameters if p.default is not inspect.Parameter.empty}


def joined(values) -> str:
    """A default list as it is typed: comma-separated."""
    return ",".join(str(v) for v in values)


def _checked(check_value: Callable, value: Any, *more: Any) -> Any:
    """check_value("value", value, *more) from fastadv.checks, its error an ArgumentTypeError
    with the message less the name (argparse names the option)."""
    try:
        return check_value("value", value, *more)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(re.sub(r"^value:? ", "", str(error))) from None


def argument(parse: Callable[[str], Any], expected: str, check_value: Callable) -> Callable:
    """An argparse type: `parse(text)` ("expected <expected>" when it raises ValueError), then
    `check_value` (see _checked)."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        return _checked(check_value, value)

    return convert


positive_int = argument(int, "an integer", check.positive_int)


def _at_least_zero(name: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


nonnegative_int = argument(int, "an integer", _at_least_zero)
nonnegative = argument(float, "a number", functools.partial(check.number, at_least=0))
positive = argument(float, "a number", functools.partial(check.number, above=0))
probability = argument(float, "a number", check.probability)


def csv_list(choices: Collection[str] | None = None, item: Callable[[str], Any] | None = None, *,
             unique: bool = False, sort: bool = False) -> Callable:  # fmt: skip
    """An argparse type: a non-empty comma-separated list, each part converted by `item` (an
    argparse type; default: kept as text) or checked to be one of `choices`; with `unique`
    the first of equal values is kept, with `sort` the values are sorted."""

    def parse(text: str) -> list:
        parts = [s.strip() for s in text.split(",") if s.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if item is not None:
            values = [item(part) for part in parts]
        else:
            values = parts if choices is None else _checked(check.choices, parts, choices)
        values = list(dict.fromkeys(values)) if unique else values
        return sorted(values) if sort else values

    return parse


def seed(text: str) -> int:
    """A seed: an integer in [0, 2**63 - 1] (what torch.manual_seed takes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63 - 1], got {text}")
    return value


DEVICE_HELP = "cpu, cuda, cuda:N or auto: the GPU when torch sees one (torch.cuda.is_available()), else the CPU"


def device(text: str) -> torch.device:
    """cpu, cuda, cuda:N or auto (cuda when there is a GPU, else cpu); other device types are
    refused, and so is cuda on a machine without one (argparse's one-line error, exit status 2).
    Options give default="auto": argparse passes it through here when the command line is parsed,
    so --help shows "auto" and the device is chosen on the machine that runs the command."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda was asked for but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def defense(text: str) -> str:
    """A defence as --defense takes it ("jpeg:75,bits:5"), checked by fastadv.defenses.parse_defense."""
    from ..defenses import parse_defense

    try:
        parse_defense(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("defense: ")) from None
    return text


def backend(text: str) -> str:
    """A fused-op backend's name: auto or a registered one (whether it runs: check_backend)."""
    from ..backends import BACKENDS

    return _checked(lambda name, value: check.choice(name, value, ("auto", *BACKENDS)), text)


def check_backend(name: str, device: torch.device) -> None:
    """The backend can run on `device`, or CliError saying why."""
    from ..ops import resolve_backend

    try:
        resolve_backend(name, device)
    except (ValueError, RuntimeError) as error:
        raise CliError(f"--backend: {str(error).splitlines()[0]}") from None


# The largest image side --input-size and --image-size resize to: a batch of 256 RGB images of
# 4096 x 4096 is already 51 GB as float32; beyond it a typo allocates until the machine gives up.
MAX_IMAGE_SIDE = 4096


def image_side(text: str) -> int:
    """A resized image's side: an integer in [1, MAX_IMAGE_SIDE]."""
    side = positive_int(text)
    if side > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(f"at most {MAX_IMAGE_SIDE} pixels a side, got {side}")
    return side


def input_size(text: str) -> tuple[int, int]:
    """H,W (or N for N x N): integers in [1, MAX_IMAGE_SIDE]."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected H,W or N, got {text!r}")
    sizes = [image_side(p) for p in parts]
    return (sizes[0], sizes[-1])
