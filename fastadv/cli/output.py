"""The output folder of `fastadv eval` and `fastadv train` (--out, --resume, --overwrite).

A command never overwrites a run silently. The folder is checked, and created, before any work
starts: it must be a folder (or a path where one can be made) that can be written to. If it holds
a run (any of RUN_FILES), the command refuses to start unless --resume (continue it: its state
file must be there) or --overwrite (its run files are removed once every input has been checked)
is given; --resume with no state to continue is an error too. When the command then fails, what
it created is removed again (the folder itself, if it made it), except a training's last good
checkpoint (`keep`)."""

from __future__ import annotations

import datetime
import glob
import os
import shutil
import tempfile

from .. import _distributed
from ..checkpoint import remove_stale_temporaries
from .args import CliError

# the files a run of eval or train leaves in its folder (eval's state per rank under torchrun)
RUN_FILES = ("report.json", "eval-state.pt", "eval-state.pt.*", "latest.pt", "model.pt", "history.json",
             "robustness.png", "examples.png", "defenses.png")  # fmt: skip
OPTIONS_HELP = ("a folder holding a run (report.json, eval-state.pt, latest.pt, model.pt, history.json) is refused "
                "unless --resume or --overwrite is given")  # fmt: skip


def _run_files(folder: str) -> list[str]:
    return sorted({path for pattern in RUN_FILES for path in glob.glob(os.path.join(glob.escape(folder), pattern))})


class OutputFolder:
    """The checked output folder `path` of one command; `with` it around the command's work.

    command: "eval" or "train" (names the default folder, fastadv-results/<command>-<time>).
    state: the file --resume continues (eval-state.pt, latest.pt), in the folder.
    keep: files kept when the command fails (train's latest.pt: the last good checkpoint).
    Raises CliError (one line, naming --out or --resume) before anything is written."""

    def __init__(self, out: str | None, command: str, *, resume: bool, overwrite: bool, state: str,
                 keep: tuple[str, ...] = ()) -> None:  # fmt: skip
        if resume and out is None:
            raise CliError(f"--resume needs --out (the folder of the {command} run to continue)")
        stamp = datetime.datetime.now().strftime(f"{command}-%Y%m%d-%H%M%S")
        self.path = _distributed.shared(out or os.path.join("fastadv-results", stamp))  # rank 0's time on every rank
        self.overwrite, self.keep = overwrite, keep
        self.created = self._create(self.path)
        try:
            self._probe_writable()
            self.old = _run_files(self.path)
            folders = [path for path in self.old if os.path.isdir(path)]
            if folders:
                raise CliError(f"--out: {folders[0]} is a folder where {command} writes a file (move it away)")
            if resume and not glob.glob(os.path.join(glob.escape(self.path), state + "*")):
                raise CliError(f"--resume: {self.path} holds no {state} to continue (start without --resume)")
            if self.old and not (resume or overwrite):
                names = ", ".join(os.path.basename(p) for p in self.old)
                raise CliError(f"--out: {self.path} holds a run ({names}); --resume continues it, --overwrite "
                               "replaces it")  # fmt: skip
        except CliError:
            self._remove_created()
            raise
        self.before = set(os.listdir(self.path))

    @staticmethod
    def _create(path: str) -> str | None:
        """Makes the folder; returns the topmost folder made (None when it existed)."""
        if os.path.exists(path) and not os.path.isdir(path):
            raise CliError(f"--out: {path} exists and is not a folder")
        top, parent = None, os.path.abspath(path)
        while not os.path.exists(parent):
            top, parent = parent, os.path.dirname(parent)
        if top is None:
            return None
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise CliError(f"--out: cannot create {path} ({error.strerror})") from None
        return top

    def _probe_writable(self) -> None:
        try:
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as error:
            raise CliError(f"--out: cannot write into {self.path} ({error.strerror})") from None

    def start(self) -> None:
        """Removes the replaced run's files (--overwrite) and what saves killed midway left
        (.tmp-*.pt of processes that are gone); call it once every input is checked."""
        remove_stale_temporaries(self.path)
        if not self.overwrite or _distributed.rank_and_world()[0] != 0:
            return
        for path in self.old:
            try:
                os.unlink(path)
            except OSError as error:
                raise CliError(f"--overwrite: cannot remove {path} ({error.strerror})") from None

    def _remove_created(self) -> None:
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        # An interrupted command keeps its state for --resume; a failed one leaves nothing new
        # behind but the files in `keep`.
        if kind is None or not issubclass(kind, Exception):
            return
        kept = [name for name in self.keep if os.path.exists(os.path.join(self.path, name))]
        if kept:
            return
        if self.created is not None:
            self._remove_created()
            return
        for name in set(os.listdir(self.path)) - self.before:
            path = os.path.join(self.path, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.unlink(path)
