"""`fastadv ood --in IN_DATA --out OOD_DATA`: out-of-distribution detection (AUROC, AUPR, FPR95
of the max softmax probability, max logit and energy), optionally with the OOD images attacked.
Writes report.json and ood.png into --results, an output folder as fastadv eval's --out
(fastadv.cli.output.OutputFolder: never an input's folder, one run at a time, --overwrite
replacing the old run only when the new one succeeds). Errors are one line, exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import os

import torch

from .. import digits_models
from ..evaluation import write_json
from ..evaluation.inputs import check_fit
from ..evaluation.ood import SCORES, detect_ood, format_ood_report
from ..options import arguments as arg
from ..options import class_options, data_options, model_options
from ..options.arguments import CliError
from .output import OutputFolder

DEFAULTS = arg.defaults(detect_ood)
REPORT = "report.json"  # (the state OutputFolder asks for: fastadv ood has no --resume)
DESCRIPTION = """Out-of-distribution detection: scores every image of --in (in-distribution) and --out (OOD)
by the model's max softmax probability, max logit and energy, and reports AUROC, AUPR (OOD positive)
and the FPR at 95% TPR. With --eps > 0 also under attack: an L-inf PGD moves each OOD image within eps
to look in-distribution. ImageNet-O: --in an ImageNet-1k validation folder, --out imagenet-o/."""


def add_parser(sub) -> None:
    p = sub.add_parser("ood", help="out-of-distribution detection (AUROC, AUPR, FPR95), optionally under attack",
                       description=DESCRIPTION)  # fmt: skip
    model_options.add(p)  # --model, --weights, --num-classes, --mean, --std
    p.add_argument("--in", dest="in_data", default="digits", metavar="IN_DATA",
                   help="in-distribution data (as fastadv eval's --data)")  # fmt: skip
    p.add_argument("--out", dest="out_data", required=True, metavar="OOD_DATA",
                   help="out-of-distribution data (as fastadv eval's --data)")  # fmt: skip
    data_options.add_image_size(p)
    data_options.add_data_options(p, shuffle=False)  # --input-size, --workers, --limit, --subset: for both data sets
    p.add_argument("--scores", type=arg.csv_list(SCORES, unique=True), default=list(SCORES),
                   help=f"among {', '.join(SCORES)} (higher: more in-distribution)")  # fmt: skip
    p.add_argument("--eps", type=arg.nonnegative, default=DEFAULTS["eps"],
                   help="L-inf budget of the attack on the OOD images (0: no attack)")  # fmt: skip
    p.add_argument("--steps", type=arg.positive_int, default=DEFAULTS["steps"], help="PGD steps of the attack")
    p.add_argument("--batch-size", type=arg.positive_int, default=DEFAULTS["batch_size"])
    class_options.add(p)  # --class-map, --all-classes: the in-distribution data's classes
    p.add_argument("--device", type=arg.device, default="auto", help=arg.DEVICE_HELP + " (default: %(default)s)")
    p.add_argument("--results", default=None, metavar="FOLDER",
                   help="output folder (default: fastadv-results/ood-<time>); a folder holding a run (report.json) "
                   "is refused unless --overwrite is given (the old run is replaced when the new one succeeds); a "
                   "folder that is, holds or lies inside an input is refused, and so is one another run writes "
                   "into")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace the run in --results")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--cache", default=digits_models.digits_model_cache(), help="where the default digits model is kept")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


class _ResultsFolder(OutputFolder):
    """OutputFolder for --results: its errors name --results (fastadv ood's --out is the OOD data),
    and there is no --resume to offer."""

    def __init__(self, args: argparse.Namespace) -> None:
        inputs = {"--model": args.model, "--weights": args.weights, "--in": args.in_data, "--out": args.out_data,
                  "--class-map": args.class_map, "--cache": args.cache if args.model is None else None}  # fmt: skip
        with _naming_results():
            super().__init__(args.results, "ood", resume=False, overwrite=args.overwrite, state=REPORT,
                             inputs=inputs)  # fmt: skip

    def __exit__(self, kind, error, traceback) -> None:
        with _naming_results():
            super().__exit__(kind, error, traceback)


@contextlib.contextmanager
def _naming_results():
    """The output folder's errors, which name it --out, name --results."""
    try:
        yield
    except CliError as error:
        message = str(error).replace("--resume continues it, ", "")
        if message.startswith("--out"):
            message = "--results" + message.removeprefix("--out")
        raise CliError(message) from None


def run(args: argparse.Namespace) -> int:
    crop = data_options.crop_size(args)
    with _ResultsFolder(args) as output:
        model = (digits_models.standard_digits_model(args.cache) if args.model is None
                 else model_options.load(args, args.device)).to(args.device).eval()  # fmt: skip
        in_data = data_options.open_selection(args, args.in_data, "test", option="--in", crop_size=crop)
        out_data = data_options.open_selection(args, args.out_data, "test", option="--out", crop_size=crop)
        model_options.check_output(model, data_options.first_sample(in_data, option="--in", count=2), args)
        class_options.check(model, in_data, args, option="--in")
        try:  # the OOD images' labels mean nothing: only whether the model takes them
            check_fit(model, data_options.first_sample(out_data, option="--out"), torch.zeros(0, dtype=torch.long))
        except ValueError as error:
            raise CliError(f"--out: {error}") from None
        output.start()  # every input checked: the run's files go into output.work from now on
        try:
            report = detect_ood(model, in_data, out_data, scores=args.scores, eps=args.eps, steps=args.steps,
                                batch_size=args.batch_size, class_map=args.class_map, all_classes=args.all_classes,
                                workers=args.workers)  # fmt: skip
        except (ValueError, RuntimeError) as error:
            raise CliError(str(error).splitlines()[0]) from None
        report.update(model=args.model or "digits small_cnn", in_data=args.in_data, out_data=args.out_data)
        write_json(os.path.join(output.work, REPORT), report)
        print(format_ood_report(report))
        if not args.no_plots:
            from ..evaluation.plots import plot_ood

            plot_ood(report, os.path.join(output.work, "ood.png"))
    print(f"report {'in' if args.no_plots else 'and plot in'} {output.path}")
    return 0
