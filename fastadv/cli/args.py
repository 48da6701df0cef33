"""What the `fastadv` commands share: the error they report with, argument types, the --data and
--model files, and the output folder."""

from __future__ import annotations

import argparse
import datetime
import os

import torch

from .. import _distributed
from ..datasets import DataError, digits, image_folder, load_npz


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def csv_of(kind):
    def parse(text: str):
        try:
            items = [kind(s.strip()) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}, got {text!r}"
            ) from None
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return items

    return parse


def nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def csv_list(choices: dict | None = None):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if choices is not None:
            bad = [s for s in items if s not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return items

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
