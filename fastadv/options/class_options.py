"""--class-map and --all-classes (fastadv eval, fastadv ood): how a data set's classes map to
the model's outputs (fastadv.data.class_space), checked before any work so that a folder from
another class space is one line naming the option, exit status 2, never a number."""

from __future__ import annotations

import argparse

import torch

from ..data import class_space
from ..data.selection import Selection
from ..evaluation.inputs import check_fit
from . import data_options
from .arguments import CliError


def add(p: argparse.ArgumentParser, *, restrict: bool = True) -> None:
    p.add_argument(
        "--class-map", default=None, metavar="FILE",
        help="how the data's class names map to the model's outputs: JSON {name: index} or a list of names in the "
             "model's order, or text with 'name index' or one name per line in the model's order (default: "
             "WordNet-ID folders against a 1000-output model map to ImageNet-1k; folders named 0, 1, ... to those "
             "outputs; else the data's classes must be as many as the model's outputs)",
    )  # fmt: skip
    if restrict:
        p.add_argument(
            "--all-classes", action="store_true",
            help="score a data set that covers some of the model's classes (ImageNet-A, -R) over every output "
                 "(default: over the logits of the classes present, as the papers do)",
        )  # fmt: skip


def check(model, data: Selection, args: argparse.Namespace, *, option: str = "--data") -> class_space.ClassSpace:
    """The model takes the data's images and the data's classes match its outputs (the class
    space evaluate will use), or CliError naming `option` or --class-map."""
    images = data_options.first_sample(data, option=option)
    class_map = getattr(args, "class_map", None)  # (fastadv demo reads its data without one)
    unnamed = not data.source.classes and class_map is None  # labels are outputs: the check as before
    labels = torch.from_numpy(data.labels) if unnamed else torch.zeros(0, dtype=torch.long)
    try:
        check_fit(model, images, labels)
    except ValueError as error:
        raise CliError(f"{option}: {error}") from None
    device = next(iter(model.parameters()), images).device
    with torch.no_grad():
        outputs = int(model(images[:1].to(device)).shape[1])
    try:
        return class_space.resolve(data.source.classes, data.labels, outputs, class_map=class_map,
                                   all_classes=getattr(args, "all_classes", False))  # fmt: skip
    except (TypeError, ValueError) as error:
        message = str(error).splitlines()[0]
        if message.startswith("class_map: "):
            message = message.replace("class_map: ", "--class-map: ", 1).replace("give a class map", "give --class-map")
        elif message.startswith("data: "):
            message = f"{option}: " + message.removeprefix("data: ")
        raise CliError(message) from None
