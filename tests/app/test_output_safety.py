"""The output folder of `fastadv eval` and `fastadv train` never costs the user a file: an --out
that is, holds or lies inside an input is refused; --overwrite replaces the old run only when the
new one succeeds (an interrupted one is continued by --resume); two runs never write into one
folder at once (a lock that a killed run's leftover file does not block); a resume under another
--amp is refused and amp is recorded; under torchrun every rank reports a failure in one line."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastadv.evaluation.engine
from fastadv import models
from fastadv.__main__ import main

EVAL = ["--attacks", "fgsm", "--eps", "0.1", "--batch-size", "8", "--workers", "0", "--no-plots", "--quiet"]


@pytest.fixture()
def files(tmp_path):
    """A random small CNN (model.pt) and 80 random digits-sized samples (d.npz)."""
    torch.manual_seed(0)
    models.save(models.small_cnn(width=8), str(tmp_path / "model.pt"))
    generator = np.random.default_rng(0)
    x = generator.random((80, 1, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=generator.integers(0, 10, 80))
    return tmp_path


def _tree(root):
    """Every file under root with its bytes: what a refused or failed command must not change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fails_in_one_line(argv, capsys, message):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    return err[0]


def test_eval_refuses_an_out_that_holds_is_or_lies_inside_an_input(files, capsys):
    (files / "ov").mkdir()
    (files / "ov" / "model.pt").write_bytes((files / "model.pt").read_bytes())
    before = _tree(files)
    argv = ["eval", "--model", str(files / "ov" / "model.pt"), "--data", str(files / "d.npz"), "--out",
            str(files / "ov"), "--overwrite", *EVAL]  # fmt: skip
    _fails_in_one_line(argv, capsys, f"--out: {files / 'ov'} holds the --model input")
    # the data, through a symbolic link to the folder
    (files / "link").symlink_to(files / "ov")
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "ov" / "model.pt"), "--out",
            str(files / "link"), *EVAL]  # fmt: skip
    _fails_in_one_line(argv, capsys, "holds the --data input")
    (files / "link").unlink()
    # an --out inside an image folder would add a class to it
    (files / "imgs" / "a").mkdir(parents=True)
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "imgs"), "--out",
            str(files / "imgs" / "a"), *EVAL]  # fmt: skip
    _fails_in_one_line(argv, capsys, "lies inside the --data input")
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "imgs"), "--out", str(files / "imgs"),
            *EVAL]  # fmt: skip
    _fails_in_one_line(argv, capsys, "is the --data input")
    assert _tree(files) == before


def test_train_refuses_to_overwrite_its_init_model(files, capsys):
    run = files / "R"
    assert main(["train", "--data", str(files / "d.npz"), "--recipe", "standard", "--width", "8", "--epochs", "1",
                 "--workers", "0", "--out", str(run), "--quiet"]) == 0  # fmt: skip
    before = _tree(files)
    argv = ["train", "--init", str(run / "model.pt"), "--data", str(files / "d.npz"), "--epochs", "1", "--workers",
            "0", "--out", str(run), "--overwrite", "--quiet"]  # fmt: skip
    _fails_in_one_line(argv, capsys, "holds the --init input")
    argv[argv.index("--init") : argv.index("--init") + 2] = ["--recipe", "standard", "--width", "8"]
    argv[argv.index("--data") + 1] = str(run / "model.pt")  # any input, not only --init
    _fails_in_one_line(argv, capsys, "holds the --data input")
    assert _tree(files) == before


def test_a_failed_overwrite_keeps_the_old_run(files, capsys):
    out = files / "r1"
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "d.npz"), "--out", str(out), *EVAL]
    assert main(argv) == 0
    (out / "notes.txt").write_text("mine")
    before = _tree(files)
    data = np.load(files / "d.npz")
    x = data["x"].copy()
    x[60, 0, 3, 3] = np.nan
    np.savez(files / "nan.npz", x=x, y=data["y"])
    before["nan.npz"] = (files / "nan.npz").read_bytes()
    bad = [*argv, "--overwrite"]
    bad[bad.index("--data") + 1] = str(files / "nan.npz")
    _fails_in_one_line(bad, capsys, "--data")
    assert _tree(files) == before, "the old run changed, or the failed one left files"


def test_overwrite_replaces_the_run_files_only_on_success(files, capsys):
    out = files / "r1"
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "d.npz"), "--out", str(out), *EVAL]
    assert main([*argv, "--limit", "16"]) == 0
    (out / "examples.png").write_bytes(b"an old plot")  # a run file the new run does not write
    (out / "notes.txt").write_text("mine")
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["samples"] == 80
    assert sorted(os.listdir(out)) == ["eval-state.pt", "notes.txt", "report.json"]
    assert capsys.readouterr().out.splitlines()[-1] == f"report in {out}"


def _interrupt_after(monkeypatch, batches):
    """The evaluation stops (as Ctrl-C stops it) after `batches` batches."""
    real, done = fastadv.evaluation.engine._evaluate_batch, []

    def counting(*args, **kwargs):
        if len(done) == batches:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fastadv.evaluation.engine, "_evaluate_batch", counting)


def test_an_interrupted_overwrite_keeps_the_old_run_and_resume_finishes_it(files, monkeypatch):
    out = files / "r1"
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "d.npz"), "--out", str(out), *EVAL]
    assert main([*argv, "--limit", "16"]) == 0
    old = _tree(out)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 5)
        assert main([*argv, "--overwrite"]) == 130
    assert {k: v for k, v in _tree(out).items() if not k.startswith(".fastadv-overwrite")} == old
    assert main([*argv, "--resume"]) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["samples"] == 80 and not (out / ".fastadv-overwrite").exists()
    fresh = files / "fresh"
    assert main([*argv[: -len(EVAL) - 2], "--out", str(fresh), *EVAL]) == 0
    expected = json.loads((fresh / "report.json").read_text())
    assert [r["robust_accuracy"] for r in resumed["attacks"]] == [r["robust_accuracy"] for r in expected["attacks"]]


def test_a_resume_under_another_amp_is_refused_and_amp_is_recorded(files, capsys, monkeypatch):
    out = files / "r"
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "d.npz"), "--out", str(out), *EVAL]
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 5)
        assert main(argv) == 130
    _fails_in_one_line([*argv, "--resume", "--amp", "bf16"], capsys, "changed: amp")
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["settings"]["amp"] is None
    assert main([*argv, "--overwrite", "--amp", "bf16"]) == 0
    assert json.loads((out / "report.json").read_text())["settings"]["amp"] == "torch.bfloat16"


LOCKER = textwrap.dedent("""
    import sys
    from fastadv.cli.output import FolderLock, _lock_path
    lock = FolderLock(_lock_path(sys.argv[1]), sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes it
    lock.release()
""")


@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_second_run_into_a_folder_in_use_is_refused(files, capsys, command):
    out = files / "busy"
    argv = [command, "--data", str(files / "d.npz"), "--out", str(out), "--workers", "0", "--quiet"]
    argv += ["--model", str(files / "model.pt"), *EVAL] if command == "eval" else ["--epochs", "1", "--width", "8"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _fails_in_one_line(argv, capsys, f"another fastadv run (pid {holder.pid} on ")
        assert f"writes into {out}" in line and not out.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(argv) == 0
    assert not any(name.endswith("fastadv-lock") for name in os.listdir(files)), "the lock is removed"


def test_a_stale_lock_of_a_dead_process_is_taken_over(files):
    out = files / "r"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = files / ".r.fastadv-lock"
    lock.write_text(f"pid {dead.pid} on {os.uname().nodename}\n")
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "d.npz"), "--out", str(out), *EVAL]
    assert main(argv) == 0 and (out / "report.json").exists() and not lock.exists()


@pytest.mark.slow
def test_torchrun_reports_a_bad_model_in_one_line(files, tmp_path):
    whole = (files / "model.pt").read_bytes()
    (files / "trunc.pt").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541",
               "-m", "fastadv", "eval", "--model", str(files / "trunc.pt"), "--data", str(files / "d.npz"),
               "--out", str(out), *EVAL]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("fastadv eval: error: --model")]
    # (torchrun's launcher prints its own traceback, ChildFailedError, when a rank exits with 2, and
    # SIGTERMs the other rank at once: that rank may be stopped before it prints, so one line or two)
    assert len(errors) in (1, 2) and len(set(errors)) == 1, done.stderr
    assert done.returncode != 0
    assert "FileNotFoundError" not in done.stderr and "fastadv/cli" not in done.stderr, done.stderr
    assert not out.exists()


def test_a_rank_other_than_0_never_touches_the_folder(tmp_path, monkeypatch):
    """What rank 1 of torchrun does (rank 0's outcome shared with it): it makes, locks and
    removes nothing, so a folder rank 0 removed after a failure is no error on rank 1."""
    from fastadv import _distributed
    from fastadv.cli.output import OutputFolder
    from fastadv.options.arguments import CliError

    monkeypatch.setattr(_distributed, "rank_and_world", lambda: (1, 2))
    out = tmp_path / "out"
    folder = OutputFolder(str(out), "eval", resume=False, overwrite=False, state="eval-state.pt")
    assert not out.exists() and os.listdir(tmp_path) == [], "rank 1 made the folder or a lock"
    with pytest.raises(CliError, match="the model"):
        with folder:
            folder.start()
            raise CliError("the model cannot be read")  # on every rank; rank 0 removes the folder


@pytest.fixture()
def no_fcntl(monkeypatch):
    """The lock as on a system without fcntl (Windows): an exclusively created lock file."""
    from fastadv.cli import output

    monkeypatch.setattr(output, "fcntl", None)
    return output


def test_without_fcntl_a_second_holder_is_refused_and_the_lock_released(no_fcntl, tmp_path):
    from fastadv.options.arguments import CliError

    out = str(tmp_path / "r")
    first = no_fcntl.FolderLock(no_fcntl._lock_path(out), out)
    lock = tmp_path / ".r.fastadv-lock"
    assert lock.read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    # a second holder, in this process (alive) or in another one, is refused naming the first
    with pytest.raises(CliError, match=f"another fastadv run \\(pid {os.getpid()} on .*\\) writes into {out}"):
        no_fcntl.FolderLock(no_fcntl._lock_path(out), out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    other = subprocess.run([sys.executable, "-c", "import sys; import fastadv.cli.output as o; o.fcntl = None\n"
                            "try:\n o.FolderLock(o._lock_path(sys.argv[1]), sys.argv[1])\n"
                            "except o.CliError as e:\n print(e)", out], capture_output=True, text=True, env=env,
                           timeout=120)  # fmt: skip
    assert f"another fastadv run (pid {os.getpid()} on" in other.stdout, other
    assert lock.exists()
    first.release()
    assert not lock.exists()
    second = no_fcntl.FolderLock(no_fcntl._lock_path(out), out)
    second.release()
    assert os.listdir(tmp_path) == []


def test_without_fcntl_a_stale_lock_is_taken_over_and_others_are_not(no_fcntl, files, capsys):
    from fastadv.options.arguments import CliError

    out = files / "r"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = files / ".r.fastadv-lock"
    lock.write_text(f"pid {dead.pid} on {os.uname().nodename}\n")
    argv = ["eval", "--model", str(files / "model.pt"), "--data", str(files / "d.npz"), "--out", str(out), *EVAL]
    assert main(argv) == 0 and (out / "report.json").exists() and not lock.exists()
    assert not [name for name in os.listdir(files) if "fastadv-lock" in name]
    # a live process, another host's (cannot be checked) and a file being written are never stale
    for text in [f"pid {os.getpid()} on {os.uname().nodename}\n", f"pid {dead.pid} on another-host\n", ""]:
        lock.write_text(text)
        with pytest.raises(CliError, match=f"another fastadv run .* remove {lock}"):
            no_fcntl.FolderLock(str(lock), str(out))
        assert lock.read_text() == text
    # the takeover never removes a lock that a newer holder took meanwhile
    stale = f"pid {dead.pid} on {os.uname().nodename}\n"
    lock.write_text(f"pid {os.getpid()} on {os.uname().nodename}\n")
    no_fcntl._take_over(str(lock), stale)
    assert lock.read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    assert sorted(os.listdir(files)) == sorted(["model.pt", "d.npz", "r", ".r.fastadv-lock"])


class _Crash(BaseException):
    """A kill at one step of the replacement (not an Exception: nothing cleans up after it)."""


def _crash_at(patch, step: int) -> list[int]:
    """Every file operation of the replacement counted; the `step`-th one crashes."""
    import shutil

    from fastadv.cli import output

    done = [0]

    def counted(real):
        def operation(*args, **kwargs):
            done[0] += 1
            if done[0] == step:
                raise _Crash
            return real(*args, **kwargs)

        return operation

    for name in ("replace", "rename", "unlink", "rmdir", "mkdir", "makedirs", "link"):
        patch.setattr(output.os, name, counted(getattr(os, name)))
    patch.setattr(output.shutil, "rmtree", counted(shutil.rmtree))
    return done


def test_a_crash_at_any_step_of_an_overwrite_leaves_the_old_or_the_whole_new_run(tmp_path, monkeypatch):
    from fastadv.cli.output import OutputFolder

    out = tmp_path / "run"
    old = {"report.json": b"old report", "examples.png": b"old plot", "eval-state.pt.rank1": b"old state"}
    mine = {"notes.txt": b"the user's", "sub/kept.txt": b"the user's too"}
    new = {"report.json": b"new report", "robustness.png": b"new plot"}
    step, finished = 0, False
    while not finished:
        step += 1
        if out.exists():
            import shutil

            shutil.rmtree(out)
        for name, data in {**old, **mine}.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        folder = OutputFolder(str(out), "eval", resume=False, overwrite=True, state="eval-state.pt")
        folder.start()
        for name, data in new.items():
            with open(os.path.join(folder.work, name), "wb") as f:
                f.write(data)
        with monkeypatch.context() as patch:
            done = _crash_at(patch, step)
            try:
                folder.__exit__(None, None, None)
                finished = True
            except _Crash:
                pass
        if folder.lock.fd is not None:  # (a killed process's lock is gone with it)
            folder.lock.release()
        assert done[0] >= step or finished
        tree = _tree(out)
        assert {k: tree.get(k) for k in mine} == mine, f"a file of the user's lost at step {step}"
        # the old run where it was, or the whole new run in the folder and its PENDING folder
        in_place = {k: v for k, v in tree.items() if "/" not in k and k not in mine}
        pending = {k.split("/", 1)[1]: v for k, v in tree.items() if k.startswith(".fastadv-overwrite/")}
        new_whole = {**pending, **{k: v for k, v in in_place.items() if v.startswith(b"new")}}
        new_whole.pop(".fastadv-complete", None)
        assert in_place == old or new_whole == new, (step, tree)
        # the next command into the folder finishes the replacement (or finds the old run)
        OutputFolder(str(out), "eval", resume=False, overwrite=True, state="eval-state.pt").lock.release()
        tree = _tree(out)
        assert tree == {**mine, **new} or (tree == {**mine, **old} and in_place == old), (step, tree)
        assert sorted(os.listdir(out)) == sorted({*tree, "sub"} - {"sub/kept.txt"}), (step, os.listdir(out))
    assert step > 10  # every step of the replacement was crashed at once
