"""`fastadv eval` and `fastadv train`: argument parsers and what they run. Errors in arguments or
files become CliError (one line, exit status 2)."""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

from . import cli_args as arg
from . import models
from .checkpoint import CheckpointError
from .cli_args import CliError
from .datasets import DataError, digits, image_folder, load_npz
from .evaluate import ATTACKS
from .recipes import RECIPES, Recipe
from .train import OPTIMIZERS, SCHEDULES


def _default_cache() -> str:
    root = os.environ.get("FASTADV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastadv"
    )
    return os.path.join(root, "digits-small_cnn-standard.pt")


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate robustness (default: a digits model, FGSM and PGD at four eps)",
        description="Evaluate a model against attacks at several eps: clean and robust accuracy, attack success "
                    "rate, macro precision/recall/F1 under attack, perturbation norms, images/s, and the worst case "
                    "over attacks. Later attacks run only on samples still robust (AutoAttack's cascade). Writes "
                    "report.json, robustness.png and examples.png into --out. With no --model, trains (or reuses "
                    "from the cache) a small CNN on scikit-learn's digits.",
    )  # fmt: skip
    p.add_argument("--model", help="a model file written by `fastadv train` (default: the cached digits model)")
    p.add_argument(
        "--data", default="digits",
        help="'digits' (its test split), an .npz file with x, y, or a folder with one sub-folder of images per class",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=arg.positive_int, default=None, help="resize and crop folder images to this size"
    )
    p.add_argument(
        "--attacks",
        type=arg.csv_of(str),
        default=["fgsm", "pgd"],
        help=f"among {', '.join(ATTACKS)} (default: fgsm,pgd)",
    )
    p.add_argument(
        "--eps", type=arg.csv_of(float), default=[0.025, 0.05, 0.1, 0.15], help="default: 0.025,0.05,0.1,0.15"
    )
    p.add_argument("--steps", type=arg.positive_int, default=20, help="steps of the iterative attacks (default: 20)")
    p.add_argument("--batch-size", type=arg.positive_int, default=256, help="default: 256")
    p.add_argument("--no-cascade", action="store_true", help="run every attack on every correct sample")
    p.add_argument("--limit", type=arg.positive_int, default=None, help="evaluate the first N samples only")
    p.add_argument("--seed", type=int, default=0, help="random starts (default: 0)")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast the model")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--backend", default="auto", help="fused-op backend: auto, torch, triton, cpu, cuda")
    p.add_argument("--device", type=arg.device, default=arg.device("auto"), help="cpu, cuda or auto")
    p.add_argument("--out", default=None, help="output folder (default: fastadv-results/eval-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the evaluation whose state is in --out")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--cache", default=_default_cache(), help="where the default digits model is kept")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run_eval)


def _distributed(device: torch.device) -> tuple[int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): joins the process group (nccl on GPUs, gloo on CPUs),
    one GPU per local rank. Returns (rank, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), device


def _shared(value, rank: int):
    """Rank 0's value on every rank (a folder name with a time stamp, say)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _load_data(spec: str, split: str, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if spec == "digits":
        return digits(split)
    try:
        if os.path.isdir(spec):
            images, labels, _ = image_folder(spec, image_size)
            return images, labels
        return load_npz(spec)
    except DataError as error:
        raise CliError(f"--data: {error}") from None


def _default_model(cache: str, quiet: bool) -> torch.nn.Module:
    try:
        return models.load(cache)
    except CheckpointError:
        pass  # missing or damaged: train it again (seconds)
    from .models import standard_digits_model

    if not quiet:
        print(f"training the digits model (cached in {cache}) ...")
    model = standard_digits_model()
    try:
        models.save(model, cache, recipe="standard")
    except OSError as error:
        print(f"note: could not cache the model in {cache}: {error.strerror}")
    return model


def _check_fit(model, images, labels) -> None:
    try:
        with torch.no_grad():
            logits = model(images[:1])
    except RuntimeError as error:
        raise CliError(f"--data: images of shape {tuple(images.shape[1:])} do not fit the model "
                       f"({str(error).splitlines()[0]})") from None  # fmt: skip
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise CliError(f"--data: labels go up to {int(labels.max())} but the model has {logits.shape[1]} classes")


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_report

    bad = [a for a in args.attacks if a not in ATTACKS]
    if bad:
        raise CliError(f"--attacks: unknown {', '.join(bad)} (choose from {', '.join(ATTACKS)})")
    if any(e < 0 for e in args.eps):
        raise CliError("--eps: values must be >= 0")
    if args.resume and args.out is None:
        raise CliError("--resume needs --out (the folder of the evaluation to continue)")
    rank, args.device = _distributed(args.device)
    if args.model is None:
        if rank == 0:
            model = _default_model(args.cache, args.quiet)
        _barrier()  # the other ranks read the model rank 0 cached
        if rank != 0:
            model = _default_model(args.cache, quiet=True)
    else:
        try:
            model = models.load(args.model)
        except CheckpointError as error:
            raise CliError(f"--model: {error}") from None
    model = model.to(args.device).eval()
    images, labels = _load_data(args.data, "test", args.image_size)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    images, labels = images.to(args.device), labels.to(args.device)
    _check_fit(model, images, labels)
    out = _shared(args.out or os.path.join("fastadv-results", datetime.datetime.now().strftime("eval-%Y%m%d-%H%M%S")),
                  rank)  # fmt: skip
    os.makedirs(out, exist_ok=True)
    state = os.path.join(out, "eval-state.pt")
    stale = [state] + [f"{state}.rank{r}" for r in range(int(os.environ.get("WORLD_SIZE", "1")))]
    if not args.resume and rank == 0:
        for path in stale:  # a new evaluation in an old folder
            if os.path.exists(path):
                os.unlink(path)
    _barrier()
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    try:
        report = evaluate(model, (images, labels), args.attacks, args.eps, steps=args.steps,
                          batch_size=args.batch_size, cascade=not args.no_cascade, seed=args.seed, amp=amp,
                          channels_last=args.channels_last, backend=args.backend, state_path=state,
                          progress=not args.quiet)  # fmt: skip
    except (CheckpointError, RuntimeError) as error:
        raise CliError(str(error).splitlines()[0]) from None
    report["model"] = args.model or f"digits small_cnn (cached at {args.cache})"
    report["data"] = args.data
    if rank != 0:
        return 0
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(format_report(report))
    if not args.no_plots:
        from .plots import plot_examples, plot_robustness

        plot_robustness(report, os.path.join(out, "robustness.png"))
        plot_examples(model, images[:8], labels[:8], args.attacks[-1], max(args.eps), os.path.join(out, "examples.png"),
                      steps=args.steps, seed=args.seed)  # fmt: skip
    print(f"report and plots in {out}")
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="adversarial training (default: FGSM-RS on digits)",
        description="Train a model with a recipe (standard, pgd = PGD-AT, fgsm-rs = FGSM with a random start, free = "
                    "Free-AT, trades = TRADES), checkpointing every epoch into --out (latest.pt; model.pt at the "
                    "end, for `fastadv eval --model`). --resume continues a killed run.",
    )  # fmt: skip
    p.add_argument("--data", default="digits", help="'digits' (its train split) or an .npz file with x, y")
    p.add_argument("--val-data", default=None, help="held-out set (default: the digits test split for digits)")
    p.add_argument("--model", choices=sorted(models.ARCHITECTURES), default="small_cnn")
    p.add_argument("--init", default=None, help="start from this model file (fine-tune it) instead of new weights")
    p.add_argument("--width", type=arg.positive_int, default=32, help="small_cnn width (default: 32)")
    p.add_argument("--recipe", choices=RECIPES, default="fgsm-rs")
    p.add_argument("--eps", type=arg.nonnegative, default=0.1, help="default: 0.1")
    p.add_argument("--alpha", type=arg.nonnegative, default=None, help="step size (default: per recipe)")
    p.add_argument("--steps", type=arg.positive_int, default=10, help="PGD-AT and TRADES steps (default: 10)")
    p.add_argument("--replays", type=arg.positive_int, default=4, help="Free-AT replays (default: 4)")
    p.add_argument("--beta", type=arg.nonnegative, default=6.0, help="TRADES beta (default: 6)")
    p.add_argument("--clean-fraction", type=arg.nonnegative, default=0.0, help="share of clean samples per batch")
    p.add_argument("--epochs", type=arg.positive_int, default=15)
    p.add_argument("--batch-size", type=arg.positive_int, default=64)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=arg.nonnegative, default=2e-3)
    p.add_argument("--weight-decay", type=arg.nonnegative, default=0.0)
    p.add_argument("--schedule", choices=SCHEDULES, default="cyclic")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms")
    p.add_argument("--device", type=arg.device, default=arg.device("auto"))
    p.add_argument("--out", default=None, help="checkpoint folder (default: fastadv-results/train-<time>)")
    p.add_argument("--resume", action="store_true", help="continue from --out/latest.pt")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .train import fit

    if args.resume and args.out is None:
        raise CliError("--resume needs --out (the folder of the run to continue)")
    try:
        recipe = Recipe(args.recipe, eps=args.eps, alpha=args.alpha, steps=args.steps, replays=args.replays,
                        beta=args.beta, clean_fraction=args.clean_fraction)  # fmt: skip
    except ValueError as error:
        raise CliError(f"--clean-fraction: {error}" if "clean" in str(error) else str(error)) from None
    rank, args.device = _distributed(args.device)
    images, labels = _load_data(args.data, "train")
    val = _load_data(args.val_data, "test") if args.val_data else digits("test") if args.data == "digits" else None
    kwargs = {"width": args.width} if args.model == "small_cnn" else {}
    torch.manual_seed(args.seed)
    if args.init is not None:
        try:
            model = models.load(args.init)
        except CheckpointError as error:
            raise CliError(f"--init: {error}") from None
        _check_fit(model, images, labels)
    else:
        try:
            model = models.ARCHITECTURES[args.model](in_channels=images.shape[1], num_classes=int(labels.max()) + 1,
                                                     **kwargs)  # fmt: skip
        except ValueError as error:
            raise CliError(str(error)) from None
    model = model.to(args.device)
    out = _shared(args.out or os.path.join("fastadv-results", datetime.datetime.now().strftime("train-%Y%m%d-%H%M%S")),
                  rank)  # fmt: skip
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    try:
        history = fit(model, (images, labels), recipe=recipe, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                      val_data=val, amp=amp, channels_last=args.channels_last, checkpoint_dir=out,
                      resume=args.resume, seed=args.seed, deterministic=args.deterministic,
                      progress=not args.quiet)  # fmt: skip
    except (CheckpointError, ValueError) as error:
        raise CliError(str(error).splitlines()[0]) from None
    if rank != 0:
        return 0
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(history, f, indent=2)
    for h in history:
        extra = (f", clean {100 * h['clean_accuracy']:.1f}%, robust {100 * h['robust_accuracy']:.1f}%"
                 if "clean_accuracy" in h else "")  # fmt: skip
        print(f"epoch {h['epoch']}: loss {h['train_loss']:.4f}, train acc {100 * h['train_accuracy']:.1f}%{extra}")
    print(f"model in {os.path.join(out, 'model.pt')} (fastadv eval --model {os.path.join(out, 'model.pt')})")
    return 0
