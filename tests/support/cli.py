"""The command line run in this process, as a user's shell would see it: exit status and stderr."""

from __future__ import annotations

from fastadv.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """`main(argv)`'s exit status (argparse's SystemExit included) and the lines it wrote to stderr,
    output captured before the call dropped."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()
