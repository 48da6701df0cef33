"""The command line run in this process, as a user's shell would see it: exit status and stderr."""

from __future__ import annotations

from fastadv.__main__ import main


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """`main(argv)`'s exit status (argparse's SystemExit included) and the lines it wrote to stderr,
    output captured before the call dropped."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def one_error_line(argv: list[str], capsys) -> str:
    """The one line a refused command line writes (exit status 2, no traceback): every CLI error
    test's contract."""
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], (code, err)
    return err[0]
