"""`fastadv demo`: the epsilon explorer on a model and data, served by gradio (an optional extra:
`pip install 'fastadv[demo]'`): the sub-command's options (`add_parser`) and what it runs
(`run`). The model and data are read as `fastadv eval` reads them (fastadv.options.inputs);
errors become CliError (one line, exit status 2).

The page's front end lives with the page: it imports nothing of fastadv.cli, and fastadv.cli
nothing of it; the `fastadv` command (fastadv/__main__.py) adds this sub-command beside
fastadv.cli's (tests/test_layers.py holds both sides to it)."""

from __future__ import annotations

import argparse
import os
import socket

import torch

from ..data import DataError
from ..data.loader import first_images
from ..digits_models import digits_model_cache
from ..evaluation import evaluate
from ..options import arguments as arg
from ..options import data_options, model_options
from ..options.arguments import CliError
from ..options.inputs import open_inputs
from . import DEFENSES, NO_DEFENSE, Explorer, serve  # (serve imports gradio when it is called)

DESCRIPTION = """Serve the epsilon explorer: pick a test image, an attack and eps, and watch the prediction flip as
the slider moves, bare or behind a defence, attacked adaptively or not; a second tab draws robustness
curves (fastadv eval's report). With no --model,
the cached digits model and the digits test split, as fastadv eval uses. Nothing is fetched from
the internet: no share link, no analytics."""
DEMO_SAMPLES = 2048  # the digits test split (360) whole; a large folder's first images
port = arg.argument(int, "an integer", lambda name, value: _in_port_range(value))


def _in_port_range(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"value must be in [1, 65535], got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the epsilon explorer: a web page to watch attacks work (needs gradio)",
                       description=DESCRIPTION)  # fmt: skip
    model_options.add(p)  # --model (every format fastadv eval reads), --weights, --num-classes, --mean, --std
    p.add_argument("--data", default="digits",
                   help="'digits' (its test split), an .npz file with x, y, a CIFAR-10/100 python-format folder, or "
                   f"a folder with one sub-folder of images per class; the page holds its first {DEMO_SAMPLES} "
                   "samples (after --subset / --shuffle-seed)")  # fmt: skip
    data_options.add_image_size(p)
    data_options.add_data_options(p)
    p.add_argument(
        "--defense", type=arg.defense, default=None, metavar="SPEC",
        help=f"the defence the page starts with (it offers none, {', '.join(DEFENSES)}; another spec is added to "
        "them), written as fastadv eval --defense takes it, e.g. jpeg:75,bits:5",
    )  # fmt: skip
    p.add_argument("--adaptive", action="store_true", help="start with the adaptive attack ticked")
    p.add_argument(
        "--eot-samples", type=arg.positive_int, default=arg.defaults(evaluate)["eot_samples"],
        help="the EOT draws the page starts with (adaptive attacks on a random defence; default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="the address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port, default=7860)
    p.add_argument("--share", choices=["no"], default="no",
                   help="gradio's public share links need the internet and are not offered")  # fmt: skip
    p.add_argument("--device", type=arg.device, default="auto", help=arg.DEVICE_HELP)
    p.add_argument("--cache", default=digits_model_cache(), help="where the default digits model is kept")
    p.add_argument(
        "--threads", type=arg.positive_int, default=None,
        help="torch's CPU threads (one image at a time: 1 is fastest on a busy CPU; default: torch's)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def _check_host(host: str) -> None:
    """The page can be served on `host`: an address of this machine (or a name of one), checked
    by binding a socket to it before the model is loaded."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except (OSError, UnicodeError) as error:  # socket.gaierror is an OSError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise CliError(f"--host: cannot serve on {host!r}: not an address of this machine ({reason})") from None


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CliError(
            "gradio is not installed: pip install 'fastadv[demo]' (the README's set-up installs it)"
        ) from None
    _check_host(args.host)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, data, space = open_inputs(args)
    try:  # the page attacks one image at a time and draws curves over a batch: a bounded sample is held
        images, labels = first_images(data, DEMO_SAMPLES)
    except DataError as error:
        raise CliError(f"--data: {error}") from None
    model_name = args.model or f"digits small_cnn (cached at {args.cache})"
    # the page shows, attacks and scores the outputs of the data's class space (ImageNet-A's 200
    # of a 1000-output model, as fastadv eval does) with the labels as positions among them
    names = data.source.classes if space.how == "identity" else space.scored_names()
    explorer = Explorer(space.wrap(model), images, space.relabel(labels), model_name=model_name,
                        data_name=args.data, class_names=names)  # fmt: skip
    if not args.quiet:
        print(f"serving the epsilon explorer on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    try:
        serve(explorer, args.host, args.port, defense=args.defense or NO_DEFENSE, adaptive=args.adaptive,
              eot_samples=args.eot_samples)  # fmt: skip
    except OSError as error:  # the port is taken, the host is not this machine's
        raise CliError(
            f"--port / --host: cannot serve on {args.host}:{args.port} ({str(error).splitlines()[0]})"
        ) from None
    return 0
