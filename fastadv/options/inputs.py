"""The model and the data a command's options name (--model or the cached digits model, --data),
opened and checked to fit each other: what fastadv eval and fastadv demo start from. Errors are
CliError naming the option."""

from __future__ import annotations

import argparse
import warnings

import torch

from .. import _distributed, digits_models, models
from ..checkpoint import CheckpointError
from ..data import Selection
from ..data.class_space import ClassSpace
from . import class_options, data_options, model_options


def default_model(cache: str, quiet: bool) -> torch.nn.Module:
    """The digits model cached in `cache` (fastadv.digits_models), trained again (seconds) when
    the file is missing or damaged; says so unless `quiet`."""
    try:
        return models.load(cache)
    except CheckpointError:
        pass  # missing or damaged: train it again (seconds)
    if not quiet:
        print(f"training the digits model (cached in {cache}) ...")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = digits_models.standard_digits_model(cache)
    for warning in caught:  # (not cached: said in a line, as before)
        print(f"note: {warning.message}")
    return model


def open_inputs(args: argparse.Namespace, rank: int = 0) -> tuple[torch.nn.Module, Selection, ClassSpace]:
    """The model (in eval mode, on args.device) and the data (streamed), checked to fit each other,
    and the class space in which the model's outputs score the data's labels.

    args: the options of model_options.add, data_options.add_data_options and class_options.add,
    and --data, --image-size, --device, --cache, --quiet. Under torchrun (`rank` > 0) the other
    ranks wait for rank 0 to train and cache the default model, then read it."""
    if args.model is None:
        if rank == 0:
            model = default_model(args.cache, args.quiet)
        _distributed.barrier()  # the other ranks read the model rank 0 cached
        if rank != 0:
            model = default_model(args.cache, quiet=True)
    else:
        model = model_options.load(args, args.device)
    model = model.to(args.device).eval()
    data = data_options.open_selection(args, args.data, "test", crop_size=data_options.crop_size(args))
    # two images: a model that drops the batch dim of a batch of one is told apart
    model_options.check_output(model, data_options.first_sample(data, count=2), args)
    space = class_options.check(model, data, args)  # the images fit, the classes match the outputs
    return model, data, space
