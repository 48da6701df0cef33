"""`fastadv bench`: the fused steps against PyTorch eager, torch.compile and a copy; with
--attack, whole attacks' images/s; with --train, adversarial-training epochs. The options and the
printed table only: what is measured is the library fastadv.bench (fastadv/bench/); the scripts
and committed results are the repository's benchmarks/ folder (benchmarks/README.md)."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Callable

from ..options.arguments import DEVICE_HELP, CliError, csv_list, device, positive_int

DESCRIPTION = """Time the fused L-inf and L2 steps (every available backend) against the PyTorch eager formulation,
torch.compile of it, and a same-size copy, in one run; or, with --attack, PGD, APGD, CW or AutoAttack
(standard version, the original's budgets on both sides) images/s and robust accuracy of fastadv
against a naive loss.backward() loop, the peer libraries (torchattacks, the Adversarial Robustness
Toolbox, Foolbox, advertorch: each when it imports) and the model's forward + input-gradient time.
Prints a table and appends long-format CSV rows (with device, versions and git SHA)."""  # argparse re-wraps it
STEP_LEGEND = ("GB/s: the bytes a step must move / its time; vs eager: eager's time / its time (2.00x: twice as "
               "fast); of copy: its design's bytes / time as a share of a same-size copy's GB/s (the memory-bandwidth "
               "ceiling)")  # fmt: skip


def add_parser(sub) -> None:
    from ..bench import attack, step, training

    bench = sub.add_parser(
        "bench", help="benchmark the fused attack steps, or whole attacks (--attack)",
        description=DESCRIPTION,
    )  # fmt: skip
    bench.add_argument(
        "--attack", action="store_true",
        help="benchmark whole attacks instead of the steps (options --attacks, --models, --batch, --steps)",
    )  # fmt: skip
    bench.add_argument(
        "--train", action="store_true",
        help="benchmark adversarial-training epochs (FGSM-RS, PGD-AT) against a naive loop (options --recipes, "
             "--models, --batch, --batches, --steps)",
    )  # fmt: skip
    bench.add_argument(
        "--recipes", type=csv_list(training.RECIPES), default=list(training.RECIPES),
        help="--train: recipes (default: %(default)s)",
    )  # fmt: skip
    bench.add_argument("--batches", type=positive_int, default=4, help="--train: batches per epoch (default: 4)")
    bench.add_argument(
        "--models", type=csv_list(attack.MODELS), default=["digits-cnn", "resnet18-cifar"],
        help=f"--attack: models, among {', '.join(attack.MODELS)} (default: %(default)s)",
    )  # fmt: skip
    bench.add_argument(
        "--batch", type=positive_int, default=None,
        help="--attack: batch size (default: per model, larger on a GPU)",
    )  # fmt: skip
    bench.add_argument(
        "--attacks", type=csv_list(attack.KINDS), default=["pgd"],
        help=f"--attack: attacks, among {', '.join(attack.KINDS)} (default: %(default)s)",
    )  # fmt: skip
    bench.add_argument(
        "--steps", type=positive_int, default=None,
        help="--attack, --train: attack steps (default: 10; for --attacks autoattack 100, the iterations of APGD "
             "and FAB, with Square at 50 x steps queries)",
    )  # fmt: skip
    bench.add_argument(
        "--kernels", type=csv_list(dict.fromkeys(step.KERNELS)), default=list(step.KERNELS),
        help="which steps (default: %(default)s)",
    )  # fmt: skip
    bench.add_argument(
        "--sizes", type=csv_list(step.SIZES), default=list(step.SIZES),
        help="linf_step element counts (default: %(default)s)",
    )  # fmt: skip
    bench.add_argument(
        "--l2-batches", type=csv_list(step.L2_BATCHES), default=list(step.L2_BATCHES),
        help="l2_step batches: cifar = 512x3x32x32, imagenet = 64x3x224x224 (default: %(default)s)",
    )  # fmt: skip
    bench.add_argument(
        "--dtypes", type=csv_list(step.DTYPES), default=list(step.DTYPES), help="dtypes (default: %(default)s)"
    )
    bench.add_argument(
        "--device",
        type=device,
        default="auto",
        help=DEVICE_HELP,
    )
    bench.add_argument(
        "--providers",
        type=csv_list(),
        default=None,
        help="subset of eager, compile, copy, fused-triton, fused-cpu, fused-cuda; with --attack, of "
        f"{', '.join(attack.PROVIDERS)} (default: all that run on the device)",
    )
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    bench.add_argument(
        "--warmup", type=positive_int, default=None, help="untimed calls first (default: 3; 1 with --attack)"
    )
    bench.add_argument("--repeat", type=positive_int, default=None, help="timed calls (default: 10; 5 with --attack)")
    bench.add_argument(
        "--csv",
        default=None,
        help="CSV file the rows are appended to (default: fastadv-results/bench_step.csv, or bench_attack.csv)",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.attack and args.train:
        raise CliError("--attack and --train: choose one")
    kind = "attack" if args.attack else "train" if args.train else "step"
    args.csv = args.csv or f"fastadv-results/bench_{kind}.csv"
    check_csv(args.csv)  # before minutes of measuring
    if args.device.type == "cpu":
        _quiet_cuda_home_probe()
    if args.attack:
        return _run_bench_attack(args)
    if args.train:
        return _run_bench_train(args)
    from ..bench import step

    args.warmup, args.repeat = args.warmup or 3, args.repeat or 10

    from ..backends import BACKENDS

    available = step.providers(args.device, with_compile=not args.no_compile)
    names = args.providers or available
    everything = ["eager", "compile", "copy"] + [f"fused-{n}" for n in BACKENDS if n != "torch"]

    def why(name: str) -> str:
        if name == "compile":
            return "is turned off by --no-compile"
        reason = BACKENDS[name.removeprefix("fused-")].unavailable_reason(args.device)
        return f"cannot run on {args.device} ({reason})"

    _check_providers(names, everything, available, why)
    if "eager" not in names:
        names = ["eager"] + names  # the baseline every ratio is taken against
    if "copy" not in names:
        names.append("copy")
    measured = step.cases(args.kernels, args.sizes, args.l2_batches)
    rows = step.run(
        measured, args.dtypes, args.device, names, warmup=args.warmup, repeat=args.repeat, progress=not args.quiet
    )
    print(
        f"fused attack steps on {rows[0].device} "
        f"(torch {rows[0].torch}, triton {rows[0].triton}, git {rows[0].git_sha})"
    )
    print(step.format_table(rows))
    print(STEP_LEGEND)
    return _write_rows(rows, args.csv)


def _run_bench_attack(args: argparse.Namespace) -> int:
    from ..bench import attack

    everything = dict.fromkeys(p for kind in args.attacks for p in attack.KINDS[kind])
    available = dict.fromkeys(p for kind in args.attacks for p in attack.available_providers(kind, args.device))
    names = args.providers or list(available)
    _check_providers(
        names, list(everything), list(available), lambda n: attack.unavailable_reason(n, args.device) or "",
        f" with --attack --attacks {','.join(args.attacks)}",
    )  # fmt: skip
    rows = []
    for kind in args.attacks:
        mine = [n for n in names if n in attack.KINDS[kind]]
        if mine:
            rows += attack.run(
                args.models, mine, args.device, kind=kind, batch=args.batch, steps=args.steps,
                warmup=args.warmup or 1, repeat=args.repeat or 5, progress=not args.quiet,
            )  # fmt: skip
    steps = args.steps or ", ".join(f"{kind} {attack.DEFAULT_STEPS[kind]}" for kind in args.attacks)
    print(f"{', '.join(args.attacks)} with {steps} steps on {rows[0].device} "
          f"(torch {rows[0].torch}, git {rows[0].git_sha})")  # fmt: skip
    print(attack.format_table(rows))
    if not args.providers:  # the peers left out, and why
        for name in everything:
            if name in attack.PEER_LIBRARIES and name not in available:
                print(f"missing: {name} {attack.unavailable_reason(name, args.device)}")
    return _write_rows(rows, args.csv)


def _run_bench_train(args: argparse.Namespace) -> int:
    from ..bench import training

    available = training.available_providers(args.device)
    names = args.providers or available
    _check_providers(names, list(training.PROVIDERS), available, lambda n: "needs a CUDA GPU", " with --train")
    rows = training.run(
        args.models, args.recipes, names, args.device, batch=args.batch, batches=args.batches, steps=args.steps or 10,
        warmup=args.warmup or 1, repeat=args.repeat or 3, progress=not args.quiet,
    )  # fmt: skip
    print(f"adversarial training on {rows[0].device} (torch {rows[0].torch}, git {rows[0].git_sha})")
    print(training.format_table(rows))
    return _write_rows(rows, args.csv)


def check_csv(path: str) -> None:
    """CliError unless rows can be appended to `path`: a new file in a folder that can be made
    and written to, or an existing, writable benchmark CSV (its first line is the header)."""
    from ..bench.results import Row

    header = ",".join(Row.__dataclass_fields__)
    if os.path.isdir(path):
        raise CliError(f"--csv: {path} is a folder; give a CSV file")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                first = f.readline(len(header) + 2).rstrip("\r\n")
        except OSError as error:
            raise CliError(f"--csv: cannot read {path}: {error.strerror}") from None
        if first and first != header:
            raise CliError(f"--csv: {path} is not a fastadv benchmark CSV (its first line is not the header "
                           f"{header.split(',')[0]},...); rows are appended only to one, give a new file")  # fmt: skip
        try:
            open(path, "ab").close()  # (appends nothing)
        except OSError as error:
            raise CliError(f"--csv: cannot write {path}: {error.strerror}") from None
        return
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # write_csv makes the missing folders
        folder = os.path.dirname(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):  # (unnamed where the system can: no trace left)
            pass
    except OSError as error:
        raise CliError(f"--csv: cannot create {path}: {folder} cannot be written to ({error.strerror})") from None


def _quiet_cuda_home_probe() -> None:
    """torch.compile imports torch.utils.cpp_extension, which warns "No CUDA runtime is found"
    on a machine with a CUDA toolkit but no GPU: true of every CPU benchmark there, and noise."""
    logging.getLogger("torch.utils.cpp_extension").addFilter(
        lambda record: not record.getMessage().startswith("No CUDA runtime is found")
    )


def _write_rows(rows: list, path: str) -> int:
    from ..bench.results import write_csv

    try:
        write_csv(rows, path)
    except OSError as error:
        raise CliError(f"--csv: cannot write {path}: {error.strerror}") from None
    print(f"{len(rows)} rows appended to {path}")
    return 0


def _check_providers(names: list[str], everything: list[str], available: list[str], why: Callable[[str], str],
                     context: str = "") -> None:  # fmt: skip
    """CliError naming the providers that do not exist (unknown) or cannot run here (`why`)."""
    unknown = [n for n in names if n not in everything]
    if unknown:
        raise CliError(f"--providers: unknown {', '.join(unknown)}{context} (choose from {', '.join(everything)})")
    missing = [n for n in names if n not in available]
    if missing:
        raise CliError("--providers: " + "; ".join(f"{n} {why(n)}" for n in missing))
