"""The options of how a command reads its data (--image-size, --input-size, --workers,
--skip-bad-images, --limit, --subset, --shuffle-seed) and the opening of a data set they select: every error a
CliError naming the option (--data, or the option given), one line, exit status 2."""

from __future__ import annotations

import argparse

import torch

from .. import data
from ..data import DataError, Selection, default_workers
from ..data.loader import first_images
from ..evaluation.inputs import check_fit
from .arguments import MAX_IMAGE_SIDE, CliError, image_side, input_size, nonnegative_int, positive_int, seed


def add_image_size(p: argparse.ArgumentParser) -> None:
    """--image-size, for the commands that evaluate on their data (eval, ood, demo)."""
    p.add_argument("--image-size", type=image_side, default=None,
                   help=f"resize folder images' shorter side to this size (at most {MAX_IMAGE_SIDE}) and crop the "
                   "centre square")  # fmt: skip


def crop_size(args: argparse.Namespace) -> int | None:
    """--image-size, refused beside --input-size (each resizes: one or the other)."""
    if args.image_size is not None and args.input_size is not None:
        raise CliError("--image-size: give --image-size (shorter side, then crop) or --input-size (H,W), not both")
    return args.image_size


def add_data_options(p: argparse.ArgumentParser, *, shuffle: bool = True) -> None:
    """The options of how --data is read, shared by fastadv eval, train, ood and demo."""
    p.add_argument("--input-size", type=input_size, default=None,
                   help="resize image-folder images to H,W (or N for N x N; at most "
                   f"{MAX_IMAGE_SIDE} a side) as they are decoded")  # fmt: skip
    p.add_argument(
        "--workers", type=nonnegative_int, default=None,
        help=f"processes that read and decode the data (default: one per CPU, at most 8: {default_workers()} "
             "here; 0: in this process)",
    )  # fmt: skip
    p.add_argument(
        "--skip-bad-images", action="store_true",
        help="leave out images that cannot be read and list them in the report (default: such an image is an error)",
    )  # fmt: skip
    p.add_argument("--limit", type=positive_int, default=None, help="read the first N samples only")
    p.add_argument("--subset", type=positive_int, default=None,
                   help="N samples, as many from each class as possible, drawn with --shuffle-seed (or 0)")  # fmt: skip
    if shuffle:
        p.add_argument("--shuffle-seed", type=seed, default=None,
                       help="read the samples in a random order drawn from this seed (before --limit)")  # fmt: skip


def open_selection(args: argparse.Namespace, spec: str, split: str, *, option: str = "--data",
                   crop_size: int | None = None) -> Selection:  # fmt: skip
    """The samples of `spec` (see fastadv.data.open_selection) that the options in `args`
    (add_data_options) select; CliError naming `option` when they cannot be read."""
    try:
        return data.open_selection(spec, split, input_size=args.input_size, crop_size=crop_size,
                                   skip_bad=args.skip_bad_images, limit=args.limit, subset=args.subset,
                                   shuffle_seed=getattr(args, "shuffle_seed", None))  # fmt: skip
    except DataError as error:
        raise CliError(f"{option}: {error}") from None
    except ValueError as error:  # --subset larger than the data
        raise CliError(f"--{str(error).replace('_', '-')}") from None


def first_sample(data: Selection, *, option: str = "--data", count: int = 1) -> torch.Tensor:
    """The data's first `count` readable images as a batch (fewer if it has fewer), or CliError
    naming `option`."""
    try:
        return first_images(data, count)[0]
    except DataError as error:
        raise CliError(f"{option}: {error}") from None


def check_selection_fits(model, data: Selection, *, option: str = "--data") -> None:
    """The model takes the data's images and has a class for every label
    (fastadv.evaluation.inputs.check_fit on its first sample), or CliError naming `option`."""
    try:
        check_fit(model, first_sample(data, option=option), torch.from_numpy(data.labels))
    except ValueError as error:
        raise CliError(f"{option}: {error}") from None
