"""What the `fastadv` commands share: the error they report with, argument types, the --data and
--model files, and the output folder."""

from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import os
import re
from collections.abc import Callable, Collection
from typing import Any

import torch

from .. import _distributed
from .. import _validate as check
from ..datasets import DataError, digits, image_folder, load_npz


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
    """check_value("value", value, *more) from fastadv._validate, its error an ArgumentTypeError
    with the message less the name (argparse names the option)."""
    try:
        return check_value("value", value, *more)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(re.sub(r"^value:? ", "", str(error))) from None


def _argument(parse: Callable[[str], Any], expected: str, check_value: Callable) -> Callable:
    """An argparse type: `parse(text)` ("expected <expected>" when it raises ValueError), then
    `check_value` (see _checked)."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        return _checked(check_value, value)

    return convert


positive_int = _argument(int, "an integer", check.positive_int)
nonnegative = _argument(float, "a number", functools.partial(check.number, at_least=0))
probability = _argument(float, "a number", check.probability)


def csv_list(choices: Collection[str] | None = None, item: Callable[[str], Any] | None = None) -> Callable:
    """An argparse type: a non-empty comma-separated list, each part converted by `item` (an
    argparse type; default: kept as text) or checked to be one of `choices`."""

    def parse(text: str) -> list:
        parts = [s.strip() for s in text.split(",") if s.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if item is not None:
            return [item(part) for part in parts]
        return parts if choices is None else _checked(check.choices, parts, choices)

    return parse


def device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda was asked for but no CUDA GPU is available")
    return device


def output_folder(out: str | None, command: str) -> str:
    """--out, or fastadv-results/<command>-<time> with rank 0's time on every rank."""
    stamp = datetime.datetime.now().strftime(f"{command}-%Y%m%d-%H%M%S")
    return _distributed.shared(out or os.path.join("fastadv-results", stamp))


def load_data(spec: str, split: str, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if spec == "digits":
        return digits(split)
    try:
        if os.path.isdir(spec):
            images, labels, _ = image_folder(spec, image_size)
            return images, labels
        return load_npz(spec)
    except DataError as error:
        raise CliError(f"--data: {error}") from None


def check_fit(model, images, labels) -> None:
    try:
        with torch.no_grad():
            logits = model(images[:1])
    except RuntimeError as error:
        raise CliError(f"--data: images of shape {tuple(images.shape[1:])} do not fit the model "
                       f"({str(error).splitlines()[0]})") from None  # fmt: skip
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise CliError(f"--data: labels go up to {int(labels.max())} but the model has {logits.shape[1]} classes")
