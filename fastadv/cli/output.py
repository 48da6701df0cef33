"""The output folder of `fastadv eval`, `fastadv train` and `fastadv ood` (--out, --resume, --overwrite;

A command never overwrites a run silently, nor any of its inputs. Before any work starts:
- --out must not be, hold or lie inside an input (--model, --weights, --data, --init, ...): a run
  there could replace or remove it (check_inputs);
- one command at a time writes into a folder: a lock file next to it (`.<name>.fastadv-lock`,
  or inside it when its parent cannot be written) names the process (pid and host) holding it.
  The lock is an flock the kernel drops when its process dies, so the file of a killed run (a
  stale lock: its pid is gone) never blocks the next one, which takes it over. Without fcntl
  (Windows) the lock file itself is the lock, created only where none exists (O_EXCL) and kept
  open; one whose pid is gone on this host is stale and taken over the same way;
- the folder is checked and created: a folder (or a path where one can be made) that can be
  written to. If it holds a run (any of RUN_FILES), the command refuses to start unless --resume
  (continue it: its state file must be there) or --overwrite is given.

--overwrite writes the new run into PENDING inside the folder and replaces the old run with it
only when it succeeds: a failed run leaves the old one intact. An interrupted (Ctrl-C, killed)
--overwrite run keeps its state there, and --resume continues it (and then replaces the old
run). The replacement is a sequence that is carried forward from wherever it stopped (swap): the
new run is marked whole (COMPLETE in PENDING, its files synced); the old run's files (and any
file of the folder a new one would replace) are moved into REPLACING, renamed REPLACED once all
are there; the new run's files are moved in; REPLACED is deleted last. A crash at any point
leaves the old run in the folder, or the whole new run in PENDING and the folder, with the old
run's files in REPLACING / REPLACED until the new ones are all in: the next command into the
folder finishes the replacement before anything else. Files of the folder that are neither the
old run's nor the new run's are never moved. When a command fails, what it created is removed
again (the folder itself, if it made it), except a training's last good checkpoint (`keep`),
which --resume continues.

Under torchrun only rank 0 creates, locks, cleans and swaps the folder; it shares the outcome
(an error too) with the other ranks, which only write their own state files into it."""

from __future__ import annotations

import datetime
import glob
import os
import re
import shutil
import socket
import sys
import tempfile

from .. import _distributed
from ..checkpoint import remove_stale_temporaries
from ..options.arguments import CliError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): the lock is an exclusively created file (FolderLock)
    fcntl = None

# the files a run of eval or train leaves in its folder (eval's state per rank under torchrun)
RUN_FILES = ("report.json", "eval-state.pt", "eval-state.pt.*", "latest.pt", "model.pt", "history.json",
             "robustness.png", "examples.png", "defenses.png", "reliability.png", "ood.png")  # fmt: skip
PENDING = ".fastadv-overwrite"  # in --out: the --overwrite run until it has replaced the old one
COMPLETE = ".fastadv-complete"  # in PENDING: the new run succeeded, the replacement goes forward
REPLACING = ".fastadv-replacing"  # in --out: the old run's files, being moved aside
REPLACED = ".fastadv-replaced"  # in --out: all of the old run's files, deleted once the new run is in
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
    """An exclusive lock on the file `path`, which holds "pid N on HOST" while held: an flock
    (the kernel drops it when the process dies); without fcntl (Windows) the file itself, created
    only where none exists and kept open, a leftover one taken over when its pid is gone on this
    host. CliError naming the holder when another process holds it; `release` removes the file."""

    def __init__(self, path: str, folder: str) -> None:
        self.path, self.folder, self.fd, self.flock = path, folder, None, fcntl is not None
        self.fd = self._flocked() if self.flock else self._created()

    def _flocked(self) -> int:
        while True:
            fd = self._open(os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise self._refused(holder) from None
            # the holder may have released (and removed) the file between our open and flock:
            # only a lock on the file that is at `path` now counts
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, _holder().encode())
        return fd

    def _created(self) -> int:
        for _ in range(1000):  # (each round another process took, released or broke the lock meanwhile)
            try:
                fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                holder = _read_holder(self.path)
                if holder is None:  # released meanwhile
                    continue
                if not _stale(holder):  # (an empty file: its holder is writing it)
                    raise self._refused(holder.strip() or "another process",
                                        f"; if it no longer runs, remove {self.path}") from None  # fmt: skip
                _take_over(self.path, holder)
                continue
            os.write(fd, _holder().encode())
            return fd
        raise self._refused("another process", f"; if it no longer runs, remove {self.path}")

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags, 0o666)
        except FileExistsError:
            raise
        except OSError as error:  # (a folder not made yet: its parent cannot be written to)
            what = "the lock file " + self.path if os.path.isdir(self.folder) else self.folder
            raise CliError(f"--out: cannot create {what} ({error.strerror})") from None

    def _refused(self, holder: str, hint: str = "") -> CliError:
        return CliError(f"--out: another fastadv run ({holder}) writes into {self.folder}; wait for it to finish or "
                        f"choose another folder{hint}")  # fmt: skip

    def release(self) -> None:
        if self.fd is None:
            return
        if self.flock:
            self._unlink()  # (before unlocking: a waiting process then locks a new file)
            os.close(self.fd)
        else:
            os.close(self.fd)  # (Windows removes no file that is open)
            self._unlink()
        self.fd = None

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}\n"


def _read_holder(path: str) -> str | None:
    """The lock file's text; None when there is no file at `path`."""
    try:
        with open(path, "rb") as f:
            return f.read(300).decode(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:  # (being replaced: as if held)
        return ""


def _stale(holder: str) -> bool:
    """Whether the lock file's text names a process of this host that is gone (a lock of another
    host, or one not readable, is never judged stale)."""
    match = re.fullmatch(r"pid (\d+) on (.+)\n", holder)
    if match is None or match[2] != socket.gethostname() or int(match[1]) == 0:
        return False
    return not _pid_alive(int(match[1]))


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # (os.kill would end the process there, whatever the signal)
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists
        try:
            code = ctypes.c_ulong()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (another user's process: it exists)
        return True
    return True


def _take_over(path: str, holder: str) -> None:
    """Removes the stale lock file at `path` whose text is `holder`, unless another process took
    it over first: the file is renamed aside (atomic; on Windows refused while its holder has it
    open), and given back when it turns out to be a newer holder's."""
    aside = f"{path}.stale-{os.getpid()}"
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # taken over by another process
        return
    except OSError:  # (open by a live holder)
        raise CliError(f"--out: another fastadv run ({holder.strip()}) holds {path}") from None
    if _read_holder(aside) == holder:
        os.unlink(aside)
        return
    try:  # a newer holder's file: back where it was (never over a file another process made)
        os.link(aside, path)
    except OSError:
        pass
    os.unlink(aside)


def _lock_path(path: str) -> str:
    """Next to the folder (it then also guards making and replacing it), or inside it when its
    parent cannot be written to (a writable folder on a read-only mount, say)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.isdir(path) and not os.access(parent, os.W_OK):
        return os.path.join(path, ".fastadv.lock")
    return os.path.join(parent, f".{os.path.basename(path)}.fastadv-lock")


def _sync(path: str) -> None:
    """Flushes the file or folder `path` to the disk, where the system lets a folder be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # (a folder, on Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mark_complete(pending: str) -> None:
    """The run in `pending` succeeded: its files are flushed, then COMPLETE says so (from then on
    its replacement of the old run only goes forward)."""
    for name in os.listdir(pending):
        if os.path.isfile(os.path.join(pending, name)):
            _sync(os.path.join(pending, name))
    with open(os.path.join(pending, COMPLETE), "wb") as f:
        os.fsync(f.fileno())
    _sync(pending)


def _swap(folder: str) -> None:
    """Replaces the run in `folder` with the succeeded one in its PENDING (marked COMPLETE), from
    wherever an earlier call stopped: the old run's files (and any file a new one would replace)
    into REPLACING, renamed REPLACED once all are there; the new run's files moved in, PENDING
    removed; REPLACED deleted. Raises OSError (and can be called again) where a step fails."""
    pending, replacing, replaced = (os.path.join(folder, name) for name in (PENDING, REPLACING, REPLACED))
    if not os.path.isdir(replaced):  # the old run, or some of it, is still in the folder
        os.makedirs(replacing, exist_ok=True)
        new = [os.path.join(folder, name) for name in sorted(os.listdir(pending)) if name != COMPLETE]
        for path in [*_run_files(folder), *new]:
            if os.path.lexists(path):
                os.replace(path, os.path.join(replacing, os.path.basename(path)))
        _sync(replacing)
        os.replace(replacing, replaced)
        _sync(folder)
    if os.path.isdir(pending):  # the new run's files, or the rest of them
        for name in sorted(os.listdir(pending)):
            if name != COMPLETE:
                os.replace(os.path.join(pending, name), os.path.join(folder, name))
        _sync(folder)
        if os.path.exists(os.path.join(pending, COMPLETE)):
            os.unlink(os.path.join(pending, COMPLETE))
        os.rmdir(pending)
        _sync(folder)
    shutil.rmtree(replaced)


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
            self._finish_a_replacement()
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

    def _finish_a_replacement(self) -> None:
        """An --overwrite that succeeded but stopped while replacing the old run (killed, a full
        disk): its replacement is finished first."""
        if not (os.path.isdir(os.path.join(self.path, REPLACED))
                or os.path.exists(os.path.join(self.path, PENDING, COMPLETE))):  # fmt: skip
            return
        try:
            _swap(self.path)
        except OSError as error:
            raise CliError(f"--out: {self.path} holds a run that replaced another but was stopped before all its "
                           f"files were in, and they cannot be moved now ({error.strerror})") from None  # fmt: skip
        print(f"--out: finished replacing the run in {self.path} (an --overwrite was stopped while moving its "
              "files in)", file=sys.stderr)  # fmt: skip

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
            _mark_complete(self.work)
            _swap(self.path)
        except OSError as error:
            raise CliError(f"--out: cannot move the new run from {self.work} into {self.path} ({error.strerror}); "
                           f"the next fastadv command into {self.path} finishes it") from None  # fmt: skip

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
