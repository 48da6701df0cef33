"""`fastadv train`: adversarial training from the command line. Errors in arguments or files
become CliError (one line, exit status 2)."""

from __future__ import annotations

import argparse
import os
import warnings

import torch

from .. import _distributed, models
from ..checkpoint import CheckpointError, fingerprint
from ..checks import AMP_NAMES
from ..data import DataError, Selection, TensorSource, digits
from ..digits_models import DIGITS_TRAINING
from ..evaluation import write_json
from ..options import arguments as arg
from ..options import data_options
from ..options.arguments import CliError
from ..recipes import RECIPES, Recipe
from ..train import OPTIMIZERS, SCHEDULES, fit
from .output import OPTIONS_HELP, OutputFolder

# Shared with the functions the command runs: --schedule and --seed (fit), --alpha, --steps,
# --replays, --beta and --clean-fraction (Recipe), --width (small_cnn).
FIT, RECIPE, SMALL_CNN = arg.defaults(fit), arg.defaults(Recipe), arg.defaults(models.small_cnn)
# The command's own: FGSM-RS on the digits with the digits models' settings (fit's defaults are
# PGD-AT at 8/255 with SGD, for CIFAR-sized models).
DIGITS = {"recipe": "fgsm-rs", "eps": 0.1, "epochs": 15, **DIGITS_TRAINING}
DESCRIPTION = """Train a model with a recipe (standard, pgd = PGD-AT, fgsm-rs = FGSM with a random start, free =
Free-AT, trades = TRADES, distill = defensive distillation at --temperature, from a --teacher's soft labels or,
without one, from the labels: the teacher of the procedure), checkpointing every epoch into --out (latest.pt;
model.pt at the end, for `fastadv eval --model`). --resume continues a killed run."""  # argparse re-wraps it
MAX_CLASSES = 100_000  # a new model's: labels of 10**12 would ask for a head of terabytes


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="adversarial training (default: FGSM-RS on digits)",
        description=DESCRIPTION,
    )  # fmt: skip
    p.add_argument(
        "--data", default="digits",
        help="'digits' (its train split), an .npz file with x, y, a CIFAR-10/100 python-format folder (its train "
             "split), or a folder with one sub-folder of images per class",
    )  # fmt: skip
    p.add_argument(
        "--val-data", default=None,
        help="held-out set, read like --data (a CIFAR folder: its test split; default: the digits test split for "
             "digits)",
    )  # fmt: skip
    data_options.add_data_options(p, shuffle=False)
    p.add_argument(
        "--model", type=model_choice, default="small_cnn",
        help=f"a new {' or '.join(sorted(models.ARCHITECTURES))}, or a module:callable factory (e.g. "
        "torchvision.models:resnet50, timm:vit_tiny_patch16_224) built with --num-classes and seeded by --seed, "
        "started from --weights when given",
    )  # fmt: skip
    p.add_argument(
        "--weights", default=None,
        help="the state_dict a --model module:callable factory starts from (.pt/.pth or .safetensors; its shapes must "
        "fit the model, the head's included)",
    )  # fmt: skip
    p.add_argument(
        "--num-classes", type=arg.positive_int, default=None,
        help="the outputs of a --model module:callable factory (default: the classes in --data)",
    )  # fmt: skip
    p.add_argument("--init", default=None, help="start from this model file (fine-tune it) instead of new weights")
    p.add_argument(
        "--width", type=arg.positive_int, default=None,
        help=f"small_cnn width (default: {SMALL_CNN['width']}); other models and --init have none",
    )  # fmt: skip
    p.add_argument("--recipe", choices=RECIPES, default=DIGITS["recipe"])
    p.add_argument("--eps", type=arg.nonnegative, default=DIGITS["eps"], help="default: %(default)s")
    p.add_argument("--alpha", type=arg.nonnegative, default=RECIPE["alpha"], help="step size (default: per recipe)")
    p.add_argument(
        "--steps", type=arg.positive_int, default=RECIPE["steps"], help="PGD-AT and TRADES steps (default: %(default)s)"
    )
    p.add_argument(
        "--replays", type=arg.positive_int, default=RECIPE["replays"], help="Free-AT replays (default: %(default)s)"
    )
    p.add_argument(
        "--beta", type=arg.nonnegative, default=RECIPE["beta"], help=f"TRADES beta (default: {RECIPE['beta']:g})"
    )
    p.add_argument(
        "--clean-fraction", type=arg.probability, default=RECIPE["clean_fraction"],
        help="share of clean samples per batch",
    )  # fmt: skip
    p.add_argument(
        "--teacher", default=None,
        help="distill: the model file whose softmax at --temperature the student learns (without: the labels)",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=arg.positive, default=RECIPE["temperature"],
        help=f"distill: the softmax temperature of training (default: {RECIPE['temperature']:g})",
    )  # fmt: skip
    p.add_argument("--epochs", type=arg.positive_int, default=DIGITS["epochs"])
    p.add_argument("--batch-size", type=arg.positive_int, default=DIGITS["batch_size"])
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DIGITS["optimizer"])
    p.add_argument("--lr", type=arg.positive, default=DIGITS["lr"])
    p.add_argument("--weight-decay", type=arg.nonnegative, default=DIGITS["weight_decay"])
    p.add_argument("--schedule", choices=SCHEDULES, default=FIT["schedule"])
    p.add_argument("--amp", choices=list(AMP_NAMES), default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=arg.seed, default=FIT["seed"])
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms")
    p.add_argument("--device", type=arg.device, default="auto", help=arg.DEVICE_HELP)
    p.add_argument(
        "--out", default=None, help=f"checkpoint folder (default: fastadv-results/train-<time>); {OPTIONS_HELP}"
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from --out/latest.pt")
    again.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.teacher is not None and args.recipe != "distill":
        raise CliError(f"--teacher: only --recipe distill takes a teacher, not {args.recipe}")
    rank, args.device = _distributed.init_from_env(args.device)
    teacher = None
    if args.teacher is not None:
        try:
            teacher = models.load(args.teacher, device=args.device)
        except CheckpointError as error:
            raise CliError(f"--teacher: {error}") from None
    try:
        recipe = Recipe(args.recipe, eps=args.eps, alpha=args.alpha, steps=args.steps, replays=args.replays,
                        beta=args.beta, clean_fraction=args.clean_fraction, temperature=args.temperature,
                        teacher=teacher)  # fmt: skip
    except ValueError as error:
        raise CliError(str(error)) from None
    inputs = {"--data": args.data, "--val-data": args.val_data, "--init": args.init, "--weights": args.weights,
              "--teacher": args.teacher}  # fmt: skip
    output = OutputFolder(args.out, "train", resume=args.resume, overwrite=args.overwrite, state="latest.pt",
                          keep=("latest.pt",), inputs=inputs)  # fmt: skip
    with output:
        model, train, val = _inputs(args)
        # where the weights started: --init's weights, or a new model drawn from --seed (in the
        # settings already); a resume with another --init, or without it, is another run
        start = fingerprint(model.state_dict().items()) if args.init or args.weights else "a new model"
        if teacher is not None:
            data_options.check_selection_fits(teacher, train, option="--teacher")
        output.start()  # every input checked: the run's files go into output.work from now on
        try:
            history = fit(model, train, recipe=recipe, epochs=args.epochs, batch_size=args.batch_size,
                          optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                          schedule=args.schedule, val_data=val, amp=args.amp, channels_last=args.channels_last,
                          checkpoint_dir=output.work, resume=args.resume, seed=args.seed,
                          deterministic=args.deterministic, progress=not args.quiet, workers=args.workers,
                          run_identity={"init": start})  # fmt: skip
        except ValueError as error:  # CheckpointError too; DataError: an image that cannot be decoded
            where = "--data: " if isinstance(error, DataError) else ""
            raise CliError(where + str(error).splitlines()[0]) from None
        if rank != 0:
            return 0
        write_json(os.path.join(output.work, "history.json"), history)
    for h in history:
        extra = (f", clean {100 * h['clean_accuracy']:.1f}%, robust {100 * h['robust_accuracy']:.1f}%"
                 if "clean_accuracy" in h else "")  # fmt: skip
        print(f"epoch {h['epoch']}: loss {h['train_loss']:.4f}, train acc {100 * h['train_accuracy']:.1f}%{extra}")
    model_file = os.path.join(output.path, "model.pt")
    print(f"model in {model_file} (fastadv eval --model {model_file})")
    return 0


def model_choice(value: str) -> str:
    """--model: an architecture of fastadv's or a module:callable factory."""
    if value in models.ARCHITECTURES or models.is_factory(value):
        return value
    raise argparse.ArgumentTypeError(
        f"expected {', '.join(sorted(models.ARCHITECTURES))} or a module:callable factory, got {value!r}"
    )


def _inputs(args: argparse.Namespace) -> tuple[torch.nn.Module, Selection, Selection | None]:
    """The model on args.device (new, or --init), the training data and the held-out data
    (None without), streamed, all checked before the first epoch."""
    train = data_options.open_selection(args, args.data, "train")
    if args.val_data:
        val = data_options.open_selection(args, args.val_data, "test", option="--val-data")
    else:
        val = Selection(TensorSource(*digits("test"), name="digits")) if args.data == "digits" else None
    if args.width is not None and (args.init is not None or args.model != "small_cnn"):
        raise CliError(f"--width: {'--init' if args.init is not None else f'--model {args.model}'} has no width "
                       "(only a new small_cnn has)")  # fmt: skip
    factory = models.is_factory(args.model)
    for option, value in (("--weights", args.weights), ("--num-classes", args.num_classes)):
        if value is not None and (args.init is not None or not factory):
            raise CliError(f"{option}: goes with a --model module:callable factory, not "
                           f"{'--init' if args.init is not None else f'--model {args.model}'}")  # fmt: skip
    torch.manual_seed(args.seed)
    if args.init is not None:
        try:
            kind = "a module:callable factory" if models.is_factory(args.init) else models.file_kind(args.init)
            if kind != "torch":  # fine-tuned models are saved as fastadv model files: their architecture is known
                raise CliError(f"--init: {args.init}: {models.KIND_NAMES.get(kind, kind)}; --init takes a fastadv "
                               "model file (fastadv train's model.pt, fastadv.models.save)")  # fmt: skip
            model = models.load(args.init)
        except CheckpointError as error:
            raise CliError(f"--init: {error}") from None
    else:
        classes = train.source.class_count()
        if classes > MAX_CLASSES:
            raise CliError(f"--data: labels go up to {classes - 1}; a new model has at most {MAX_CLASSES} classes")
        if factory:
            return _factory_model(args, train, val, args.num_classes or classes)
        kwargs = {"width": args.width or SMALL_CNN["width"]} if args.model == "small_cnn" else {}
        try:
            channels = data_options.first_sample(train).shape[1]
            model = models.ARCHITECTURES[args.model](in_channels=channels, num_classes=classes, **kwargs)
        except ValueError as error:
            raise CliError(str(error)) from None
    return _checked(args, model, train, val)


def _factory_model(args, train: Selection, val: Selection | None, classes: int):
    """--model module:callable: its model with `classes` outputs, drawn from --seed, or with --weights."""
    try:
        with warnings.catch_warnings():  # random weights are where training starts, not a warning
            warnings.simplefilter("ignore", models.RandomWeightsWarning)
            model = models.load(args.model, args.weights, num_classes=classes, allow_random_weights=True,
                                seed=args.seed)  # fmt: skip
    except CheckpointError as error:  # ModelError: the factory, the weights, a download refused
        raise CliError(f"--{'weights' if args.weights and str(error).startswith(args.weights) else 'model'}: "
                       f"{error}") from None  # fmt: skip
    if getattr(model, "fastadv_spec", None) is None:
        raise CliError(f"--model: {args.model} builds a module fastadv cannot save (it takes no attributes)")
    return _checked(args, model, train, val)


def _checked(args, model: torch.nn.Module, train: Selection, val: Selection | None):
    """The model on args.device, checked against the training and held-out data."""
    model = model.to(args.device)
    data_options.check_selection_fits(model, train)
    if val is not None:
        data_options.check_selection_fits(model, val, option="--val-data")
    return model, train, val
