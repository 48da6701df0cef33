"""The `fastadv` command: `fastadv eval` (robustness evaluation), `fastadv train` (adversarial
training), `fastadv ood` (out-of-distribution detection), `fastadv bench` (the fused steps against
PyTorch eager, torch.compile and a copy; with --attack, PGD, APGD and CW images/s against a naive
loop and torchattacks) and `fastadv demo` (the epsilon explorer, a web page).

The dispatcher above the two front ends: each sub-command is a module with `add_parser(sub)` and
the function it runs, fastadv/cli/<name>_cmd.py for eval, train, ood and bench, and
fastadv/demo/command.py for demo; the option parsing they share is fastadv/options/. `main` turns
a CliError into one line on stderr, exit status 2. `python -m fastadv` runs it, and so does the
`fastadv` console script (pyproject.toml: fastadv.__main__:main)."""

from __future__ import annotations

import argparse
import sys

from . import _distributed
from .cli import bench_cmd, eval_cmd, ood_cmd, train_cmd
from .demo import command as demo_command
from .options.arguments import CliError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Errors in one line on stderr (no usage block), exit status 2, as CliError's."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastadv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_cmd.add_parser(sub)
    demo_command.add_parser(sub)
    eval_cmd.add_parser(sub)
    ood_cmd.add_parser(sub)
    train_cmd.add_parser(sub)
    for command in sub.choices.values():
        _show_defaults(command)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's default in --help: added where its help does not give it already."""
    for action in parser._actions:
        value = action.default
        if value is None or value is False or value == argparse.SUPPRESS or "default" in (action.help or ""):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        action.help = f"{action.help + ' ' if action.help else ''}(default: {shown.replace('%', '%%')})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CliError as error:
        print(f"fastadv {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _distributed.destroy()  # the process group eval / train joined under torchrun


if __name__ == "__main__":
    sys.exit(main())
