"""The output folder of `fastadv eval` and `fastadv train` (--out, --resume, --overwrite).

A command never overwrites a run silently, nor any of its inputs. Before any work starts:
- --out must not be, hold or lie inside an input (--model, --weights, --data, --init, ...): a run
  there could replace or remove it (check_inputs);
- one command at a time writes into a folder: a lock file next to it (`.<name>.fastadv-lock`,
  or inside it when its parent cannot be written) names the process (pid and host) holding it.
  The lock is an flock the kernel drops when its process dies, so the file of a killed run (a
  stale lock: its pid is gone) never blocks the next one, which takes it over;
- the folder is checked and created: a folder (or a path where one can be made) that can be
  written to. If it holds a run (any of RUN_FILES), the command refuses to start unless --resume
  (continue it: its state file must be there) or --overwrite is given.

--overwrite writes the new run into PENDING inside the folder and moves its files over the old
run's only when it succeeds: a failed run leaves the old one intact. An interrupted (Ctrl-C,
killed) --overwrite run keeps its state there, and --resume continues it (and then replaces the
old run). When a command fails, what it created is removed again (the folder itself, if it made
it), except a training's last good checkpoint (`keep`), which --resume continues.

Under torchrun only rank 0 creates, locks, cleans and swaps the folder; it shares the outcome
(an error too) with the other ranks, which only write their own state files into it."""

from __future__ import annotations

import datetime
import glob
import os
import shutil
import socket
import tempfile

from .. import _distributed
from ..checkpoint import remove_stale_temporaries
from ..options.arguments import CliError

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the other checks still hold)
    fcntl = None

# the files a run of eval or train leaves in its folder (eval's state per rank under torchrun)
RUN_FILES = ("report.json", "eval-state.pt", "eval-state.pt.*", "latest.pt", "model.pt", "history.json",
             "robustness.png", "examples.png", "defenses.png")  # fmt: skip
PENDING = ".fastadv-overwrite"  # in --out: the --overwrite run until it succeeds
OPTIONS_HELP = ("a folder holding a run (report.json, eval-state.pt, latest.pt, model.pt, history.json) is refused "
                "unless --resume or --overwrite is given (the old run is replaced when the new one succeeds); "
                "a folder that is, holds or lies inside an input is refused, and so is one another run writes "
                "into")  # fmt: skip


def _run_files(folder: str) -> list[str]:
    return sorted({path for pattern in RUN_FILES for path in glob.glob(os.path.join(glob.escape(folder), pattern))})


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_inputs(out: str, inputs: dict[str, str | None]) -> None:
    """CliError when the folder `out` is, holds or lies inside one of `inputs` (option -> path;
    None and paths that do not exist, such as 'digits' or a module:callable, are skipped). Both
    the paths as given and with symbolic links resolved are compared."""
    outs = {os.path.abspath(out), os.path.realpath(out)}
    for option, given in inputs.items():
        if not given or not os.path.exists(given):
            continue
        for path in {os.path.abspath(given), os.path.realpath(given)}:
            for folder in outs:
                if path == folder:
                    raise CliError(f"--out: {out} is the {option} input; write the run into another folder")
                if _within(path, folder):
                    raise CliError(f"--out: {out} holds the {option} input {given}, which a run there could replace "
                                   "or remove; write the run into another folder")  # fmt: skip
                if _within(folder, path):
                    raise CliError(f"--out: {out} lies inside the {option} input {given}; write the run into another "
                                   "folder")  # fmt: skip


class FolderLock:
    """An exclusive lock on the file `path` (flock: the kernel drops it when the process dies),
    which holds "pid N on HOST" while held. CliError naming the holder when another process holds
    it; `release` removes the file."""

    def __init__(self, path: str, folder: str) -> None:
        self.path, self.fd = path, None
        if fcntl is None:
            return
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:  # (a folder not made yet: its parent cannot be written to)
                what = "the lock file " + path if os.path.isdir(folder) else folder
                raise CliError(f"--out: cannot create {what} ({error.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CliError(f"--out: another fastadv run ({holder}) writes into {folder}; wait for it to finish or "
                               "choose another folder") from None  # fmt: skip
            # the holder may have released (and removed) the file between our open and flock:
            # only a lock on the file that is at `path` now counts
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # (before unlocking: a waiting process then locks a new file)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _lock_path(path: str) -> str:
    """Next to the folder (it then also guards making and replacing it), or inside it when its
    parent cannot be written to (a writable folder on a read-only mount, say)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.isdir(path) and not os.access(parent, os.W_OK):
        return os.path.join(path, ".fastadv.lock")
    return os.path.join(parent, f".{os.path.basename(path)}.fastadv-lock")


class OutputFolder:
    """The checked output folder `path` of one command; `with` it around the command's work,
    which writes into `work` (the folder, or PENDING in it for --overwrite) once `start` is called.

    command: "eval" or "train" (names the default folder, fastadv-results/<command>-<time>).
    state: the file --resume continues (eval-state.pt, latest.pt), in the folder.
    keep: files kept when the command fails (train's latest.pt: the last good checkpoint).
    inputs: option -> path of every file or folder the command reads (see check_inputs).
    Raises CliError (one line, naming --out or --resume) before anything is written."""

    def __init__(self, out: str | None, command: str, *, resume: bool, overwrite: bool, state: str,
                 keep: tuple[str, ...] = (), inputs: dict[str, str | None] | None = None) -> None:  # fmt: skip
        if resume and out is None:
            raise CliError(f"--resume needs --out (the folder of the {command} run to continue)")
        stamp = datetime.datetime.now().strftime(f"{command}-%Y%m%d-%H%M%S")
        self.path = _distributed.shared(out or os.path.join("fastadv-results", stamp))  # rank 0's time on every rank
        self.rank = _distributed.rank_and_world()[0]
        self.overwrite, self.keep = overwrite, keep
        self.work, self.created, self.lock, self.old, self.before = self.path, None, None, [], set()
        error = None
        if self.rank == 0:  # only rank 0 touches the folder
            try:
                self._open(command, resume, state, inputs or {})
            except CliError as caught:
                error = str(caught)
        error, self.work = _distributed.shared((error, self.work))
        if error is not None:
            raise CliError(error)

    def _open(self, command: str, resume: bool, state: str, inputs: dict[str, str | None]) -> None:
        check_inputs(self.path, inputs)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise CliError(f"--out: {self.path} exists and is not a folder")
        top = self._create(os.path.dirname(os.path.abspath(self.path)), shown=self.path)
        # (when the lock is refused, parents made here stay: the run holding it may be using them)
        self.lock = FolderLock(_lock_path(self.path), self.path)
        try:
            made = self._create(self.path)
            self.created = top or made
            self._probe_writable()
            pending = os.path.join(self.path, PENDING)
            if resume and os.path.isdir(pending):
                self.work = pending  # an interrupted --overwrite run: continue it
            self.old = _run_files(self.path)
            folders = [path for path in self.old if os.path.isdir(path)]
            if folders:
                raise CliError(f"--out: {folders[0]} is a folder where {command} writes a file (move it away)")
            if resume and not glob.glob(os.path.join(glob.escape(self.work), state + "*")):
                raise CliError(f"--resume: {self.path} holds no {state} to continue (start without --resume)")
            if self.old and not (resume or self.overwrite):
                names = ", ".join(os.path.basename(p) for p in self.old)
                raise CliError(f"--out: {self.path} holds a run ({names}); --resume continues it, --overwrite "
                               "replaces it")  # fmt: skip
            self.before = set(os.listdir(self.work))
        except CliError:
            self._remove_created()
            self.lock.release()
            raise

    @staticmethod
    def _create(path: str, shown: str | None = None) -> str | None:
        """Makes the folder `path` (for the folder `shown`: its parent); returns the topmost
        folder made (None when it existed)."""
        if os.path.exists(path) and not os.path.isdir(path):
            if shown is not None:
                raise CliError(f"--out: cannot create {shown} (Not a directory)")
            raise CliError(f"--out: {path} exists and is not a folder")
        top, parent = None, os.path.abspath(path)
        while not os.path.exists(parent):
            top, parent = parent, os.path.dirname(parent)
        if top is None:
            return None
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise CliError(f"--out: cannot create {shown or path} ({error.strerror})") from None
        return top

    def _probe_writable(self) -> None:
        try:
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as error:
            raise CliError(f"--out: cannot write into {self.path} ({error.strerror})") from None

    def start(self) -> None:
        """Call it once every input is checked: an --overwrite of a run starts its PENDING
        folder (an earlier unfinished one removed), and what saves killed midway left (.tmp-*.pt
        of processes that are gone) is removed. Every rank calls it."""
        if self.rank == 0:
            pending = os.path.join(self.path, PENDING)
            if self.overwrite:
                shutil.rmtree(pending, ignore_errors=True)
                if self.old:
                    try:
                        os.mkdir(pending)
                    except OSError as error:
                        raise CliError(f"--overwrite: cannot create {pending} ({error.strerror})") from None
                    self.work = pending
            remove_stale_temporaries(self.work)
            self.before = set(os.listdir(self.work))
        self.work = _distributed.shared(self.work)

    def _finish(self) -> None:
        """The run succeeded: its files replace the old run's (--overwrite, a resumed --overwrite)."""
        if self.work == self.path:
            return
        try:
            for path in _run_files(self.path):
                os.unlink(path)
            for name in os.listdir(self.work):
                os.replace(os.path.join(self.work, name), os.path.join(self.path, name))
            os.rmdir(self.work)
        except OSError as error:
            raise CliError(f"--out: cannot move the new run from {self.work} into {self.path} "
                           f"({error.strerror})") from None  # fmt: skip

    def _remove_created(self) -> None:
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)

    def _clean_failed(self) -> None:
        """A failed command leaves nothing new behind but the files in `keep` (with them, its
        folder stays as it is, for --resume); the run it was to replace is intact."""
        if any(os.path.exists(os.path.join(self.work, name)) for name in self.keep):
            return
        if self.work != self.path:
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.created is not None:
            self._remove_created()
        else:
            for name in set(os.listdir(self.path)) - self.before:
                path = os.path.join(self.path, name)
                if os.path.isfile(path) or os.path.islink(path):
                    os.unlink(path)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        # An interrupted command (Ctrl-C: not an Exception) keeps its state for --resume.
        try:
            if self.rank != 0:
                return
            if kind is None:
                self._finish()
            elif issubclass(kind, Exception):
                self._clean_failed()
        finally:
            if self.lock is not None:
                self.lock.release()
