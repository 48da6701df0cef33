"""`fastadv eval`: robustness evaluation from the command line. Errors in arguments or files
become CliError (one line, exit status 2)."""

from __future__ import annotations

import argparse
import functools
import os

from .. import _distributed, digits_models
from ..attacks.catalog import ATTACKS, describe_attacks
from ..checks import AMP_NAMES
from ..data import DataError
from ..defenses import format_comparison
from ..evaluation import evaluate, evaluate_defenses, format_report, write_json
from ..options import arguments as arg
from ..options import class_options, data_options, model_options
from ..options.arguments import CliError
from ..options.inputs import open_inputs
from .output import OPTIONS_HELP, OutputFolder

EVALUATE = arg.defaults(evaluate)  # --attacks, --eps, --steps, --batch-size, --seed, --backend
DESCRIPTION = """Evaluate a model against attacks at several eps: clean and robust accuracy, attack success rate,
macro precision/recall/F1 under attack, perturbation norms, images/s, and the worst case over
attacks. Later attacks run only on samples still robust (AutoAttack's cascade). Writes report.json,
robustness.png and examples.png into --out. With no --model, trains (or reuses from the cache) a
small CNN on scikit-learn's digits."""  # argparse re-wraps it
STATE = "eval-state.pt"  # in --out: what --resume continues
EXAMPLES = 8  # samples of the first batch kept for examples.png


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate robustness (default: a digits model, FGSM and PGD at four eps)",
        description=DESCRIPTION,
    )  # fmt: skip
    model_options.add(p)  # --model, --weights, --num-classes, --mean, --std
    p.add_argument(
        "--data", default="digits",
        help="'digits' (its test split), an .npz file with x, y (memory-mapped), a CIFAR-10/100 python-format "
             "folder (its test split), or a folder with one sub-folder of images per class",
    )  # fmt: skip
    data_options.add_image_size(p)
    data_options.add_data_options(p)
    p.add_argument(
        "--attacks", type=arg.csv_list(ATTACKS, unique=True), default=list(EVALUATE["attacks"]),
        help=f"among {', '.join(ATTACKS)}, run in the order given (a repeat is dropped): with the cascade each "
        f"attacks the samples the ones before left robust (default: {arg.joined(EVALUATE['attacks'])}). Their "
        f"settings (eps and --steps as given; report.json records every one per row): "
        f"{describe_attacks().replace('%', '%%')}",
    )  # fmt: skip
    p.add_argument(
        "--eps", type=arg.csv_list(item=arg.nonnegative, unique=True, sort=True), default=list(EVALUATE["eps"]),
        help=f"sorted, repeats dropped (default: {arg.joined(EVALUATE['eps'])})",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=arg.positive_int, default=EVALUATE["steps"],
        help="steps of the iterative attacks; square and autoattack keep AutoAttack's own budgets "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=arg.positive_int, default=EVALUATE["batch_size"], help="default: %(default)s")
    p.add_argument("--no-cascade", action="store_true", help="run every attack on every correct sample")
    class_options.add(p)  # --class-map, --all-classes
    p.add_argument(
        "--defense", type=arg.defense, action="append", default=None, metavar="SPEC",
        help="evaluate the model behind these input transformations too (repeatable: one defence each), e.g. "
        "jpeg:75,bits:5; names: bits:BITS, jpeg:QUALITY, median:SIZE, resize:MIN_SCALE (random resize and pad)",
    )  # fmt: skip
    p.add_argument(
        "--adaptive", action="store_true",
        help="also run the adaptive attacks (BPDA through the transforms, EOT over random draws, margin-loss PGD) "
        "and flag gradient masking where they find 10 points less robust accuracy",
    )  # fmt: skip
    p.add_argument(
        "--eot-samples", type=arg.positive_int, default=EVALUATE["eot_samples"],
        help="with --adaptive: gradients averaged per step over draws of a random defence (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--seed", type=arg.seed, default=EVALUATE["seed"], help="random starts (default: %(default)s)")
    p.add_argument("--amp", choices=list(AMP_NAMES), default=None, help="autocast the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="attack in channels_last, the model's convolutions too (default: AutoAttack does on a "
                        "CPU, the other attacks do not)")  # fmt: skip
    p.add_argument("--backend", type=arg.backend, default=EVALUATE["backend"],
                   help="fused-op backend: auto, torch, triton, cpu, cuda (default: %(default)s)")  # fmt: skip
    p.add_argument("--device", type=arg.device, default="auto", help=f"{arg.DEVICE_HELP}; report.json records it")
    p.add_argument("--out", default=None, help=f"output folder (default: fastadv-results/eval-<time>); {OPTIONS_HELP}")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help=f"continue the evaluation whose {STATE} is in --out")
    again.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--cache", default=digits_models.digits_model_cache(), help="where the default digits model is kept")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no AutoAttack log")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.eot_samples != EVALUATE["eot_samples"] and not args.adaptive:
        raise CliError("--eot-samples: only the --adaptive attacks average gradients over draws; add --adaptive")
    rank, args.device = _distributed.init_from_env(args.device)
    arg.check_backend(args.backend, args.device)
    inputs = {"--model": args.model, "--weights": args.weights, "--data": args.data,
              "--cache": args.cache if args.model is None else None}  # fmt: skip
    output = OutputFolder(args.out, "eval", resume=args.resume, overwrite=args.overwrite, state=STATE, inputs=inputs)
    with output:
        model, data, _ = open_inputs(args, rank)  # (evaluate resolves the class space again, --class-map given)
        output.start()  # every input checked: the run's files go into output.work from now on
        _distributed.barrier()
        run_evaluation = functools.partial(evaluate, attacks=args.attacks, eps=args.eps, steps=args.steps,
                                           batch_size=args.batch_size, cascade=not args.no_cascade, seed=args.seed,
                                           amp=args.amp, channels_last=args.channels_last, backend=args.backend,
                                           progress=not args.quiet, workers=args.workers,
                                           examples=0 if args.no_plots else EXAMPLES, class_map=args.class_map,
                                           all_classes=args.all_classes)  # fmt: skip
        state = os.path.join(output.work, STATE)
        try:
            report = evaluate_defenses(model, data, run_evaluation, args.defense, device=args.device,
                                       seed=args.seed, adaptive=args.adaptive, eot_samples=args.eot_samples,
                                       state=state)  # fmt: skip
        except (ValueError, RuntimeError) as error:  # ValueError: a state file of another evaluation, say
            where = "--data: " if isinstance(error, DataError) else ""  # an image that cannot be decoded
            raise CliError(where + str(error).splitlines()[0]) from None
        # the pictures' samples as the run attacked them: tensors, not report.json's
        examples = report.pop("examples", None)
        for run_report in report.get("defenses", []):
            run_report.pop("examples", None)
        report["model"] = args.model or f"digits small_cnn (cached at {args.cache})"
        report.update({k: getattr(args, k) for k in ("weights", "mean", "std") if getattr(args, k) is not None})
        report["data"] = args.data
        if rank != 0:
            return 0
        write_json(os.path.join(output.work, "report.json"), report)
        print(format_report(report))
        if "comparison" in report:  # the defences (or the adaptive run) beside the bare model
            print(format_comparison(report["comparison"]))
        if not args.no_plots:
            from ..evaluation.plots import plot_defenses, plot_examples, plot_robustness

            if "comparison" in report:
                plot_defenses(report["comparison"], os.path.join(output.work, "defenses.png"))

            plot_robustness(report, os.path.join(output.work, "robustness.png"))
            if "calibration" in report:  # the reliability diagram
                from ..evaluation.plots import plot_reliability

                plot_reliability(report, os.path.join(output.work, "reliability.png"))
            if examples is not None:  # (None: a resumed run that had no batch left to evaluate)
                plot_examples(examples, os.path.join(output.work, "examples.png"))
    print(f"report {'in' if args.no_plots else 'and plots in'} {output.path}")
    return 0
