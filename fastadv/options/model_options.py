"""The model options of fastadv eval, ood and demo: --model in every format fastadv.models.load
reads, and --weights, --num-classes, --mean, --std. Errors become CliError (one line, exit
status 2)."""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from .. import checks, models
from ..checkpoint import CheckpointError
from . import arguments as arg
from .arguments import CliError

number = arg.argument(float, "a number", checks.number)

MODEL_HELP = (
    "a fastadv model file (fastadv train's model.pt), a TorchScript archive (torch.jit.save), a torch.export "
    "program (.pt2, torch.export.save; exported in eval mode), or a factory module:callable with --weights, "
    "e.g. torchvision.models:resnet18 or timm:resnet18 (never downloads). Archives and programs run their own "
    "code: load only trusted files (default: the cached digits model)"
)


def add(parser: argparse.ArgumentParser) -> None:
    """--model and its options, in one group."""
    group = parser.add_argument_group("model", "what --model reads, and how its input and output are checked")
    group.add_argument("--model", help=MODEL_HELP)
    group.add_argument(
        "--weights", default=None,
        help="the state_dict of a --model module:callable factory: .pt/.pth (read with weights_only=True) or "
        ".safetensors",
    )  # fmt: skip
    group.add_argument(
        "--allow-random-weights", action="store_true",
        help="evaluate a --model module:callable factory without --weights (random weights, initialised with "
        "--seed; a warning is printed): for trying the tools, never for a number to report",
    )  # fmt: skip
    group.add_argument(
        "--num-classes", type=arg.positive_int, default=None,
        help="passed to a factory that takes num_classes; for every model, checked against its output on the "
        "first batch",
    )  # fmt: skip
    for name, example in (("mean", "0.485,0.456,0.406"), ("std", "0.229,0.224,0.225")):
        group.add_argument(
            f"--{name}", type=arg.csv_list(item=number), default=None,
            help=f"with --{'std' if name == 'mean' else 'mean'}: the model sees (x - mean) / std of the images x in "
            f"[0, 1], inside the function the attacks differentiate; one value or one per channel "
            f"(ImageNet's: {example})",
        )  # fmt: skip


def load(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The model args.model names (not None), with --weights, --num-classes, --mean and --std."""
    if args.weights is not None and not models.is_factory(args.model):
        raise CliError(f"--weights: goes with a --model module:callable factory, not with the file {args.model}")
    if args.allow_random_weights and not (models.is_factory(args.model) and args.weights is None):
        raise CliError("--allow-random-weights: goes with a --model module:callable factory given no --weights")
    if (args.mean is None) != (args.std is None):
        given, missing = ("std", "mean") if args.mean is None else ("mean", "std")
        raise CliError(f"--{given}: needs --{missing} too (the model sees (x - mean) / std)")
    # --num-classes is a factory's argument; for a file it is only checked (see check_output)
    num_classes = args.num_classes if models.is_factory(args.model) else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", models.RandomWeightsWarning)
            model = models.load(args.model, args.weights, device=device, num_classes=num_classes, mean=args.mean,
                                std=args.std, allow_random_weights=args.allow_random_weights,
                                seed=getattr(args, "seed", 0))  # fmt: skip
    except models.MissingWeights as error:  # the library says it in Python's terms; here, in the options'
        raise CliError(f"--model: {error.spec}: no --weights given, so the model would have random weights: give "
                       "--weights FILE (its state_dict), or --allow-random-weights to evaluate random weights "
                       "anyway") from None  # fmt: skip
    except models.WeightsWithoutModel as error:
        raise CliError(f"--model: {error.path}: a safetensors file holds weights, not a model: give its architecture "
                       f"too, --model module:callable --weights {error.path}") from None  # fmt: skip
    except CheckpointError as error:  # (ModelError is one)
        option = "--weights" if args.weights is not None and str(error).startswith(f"{args.weights}:") else "--model"
        raise CliError(f"{option}: {error}") from None
    except ValueError as error:  # mean/std
        raise CliError(f"--mean/--std: {error}") from None
    for warning in caught:
        if issubclass(warning.category, models.RandomWeightsWarning):  # said by check_output once the model passed
            args.random_weights_warning = f"warning: {warning.message} (--allow-random-weights)"
        else:  # not ours: shown as Python would have shown it
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model


def check_output(model: torch.nn.Module, images: torch.Tensor, args: argparse.Namespace) -> None:
    """The model returns logits [B, classes] on the first images (two: so that a batch dim is
    told apart), as many classes as --num-classes; --mean/--std fit the images' channels."""
    if args.model is None:
        given = [f"--{k}" for k in ("weights", "mean", "std") if getattr(args, k) is not None]
        given += ["--allow-random-weights"] * bool(getattr(args, "allow_random_weights", False))
        if given:
            raise CliError(f"{given[0]}: goes with --model (the default digits model takes the images as they are)")
    if args.mean is not None and max(len(args.mean), len(args.std)) not in (1, images.shape[1]):
        channels = images.shape[1]
        raise CliError(f"--mean/--std: {max(len(args.mean), len(args.std))} values, but the images have {channels} "
                       f"channel{'s' * (channels != 1)}")  # fmt: skip
    name = args.model or "the digits model"
    device = next(iter(model.parameters()), images).device
    try:
        classes = models.check_logits(model, images[:2].to(device), name=name)
    except CheckpointError as error:
        raise CliError(f"--model: {error}") from None
    except (RuntimeError, AssertionError):  # (a torch.export program's guards raise AssertionError)
        return  # the images do not fit the model: data_options.check_selection_fits says so, naming --data
    if args.num_classes is not None and classes != args.num_classes:
        raise CliError(f"--num-classes: {name} returns {classes} classes, not {args.num_classes}")
    if getattr(args, "random_weights_warning", None):  # (after the checks: an error stays the only line)
        print(args.random_weights_warning, file=sys.stderr)
