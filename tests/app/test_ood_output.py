"""`fastadv ood`'s results folder (--results) is an output folder as `fastadv eval`'s --out: a
folder that is, holds or lies inside an input is refused with nothing changed; a failed
--overwrite run leaves the old report in place; a second run into a folder another run writes
into is refused. Each error is one line naming --results, exit status 2."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from support.cli import one_error_line

from fastadv import models
from fastadv.__main__ import main

OOD = ["--eps", "0", "--batch-size", "16", "--workers", "0", "--no-plots", "--quiet"]


@pytest.fixture()
def files(tmp_path):
    """A random small CNN (model.pt, BatchNorm inside), 48 in-distribution samples (in/d.npz) and
    32 noise images (ood/noise.npz), digits-sized."""
    torch.manual_seed(0)
    models.save(models.small_cnn(width=8), str(tmp_path / "model.pt"))
    generator = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    (tmp_path / "ood").mkdir()
    np.savez(tmp_path / "in" / "d.npz", x=generator.random((48, 1, 16, 16), dtype=np.float32),
             y=generator.integers(0, 10, 48))  # fmt: skip
    np.savez(tmp_path / "ood" / "noise.npz", x=generator.random((32, 1, 16, 16), dtype=np.float32),
             y=np.zeros(32, dtype=np.int64))  # fmt: skip
    return tmp_path


def _argv(files, results):
    return ["ood", "--model", str(files / "model.pt"), "--in", str(files / "in" / "d.npz"), "--out",
            str(files / "ood" / "noise.npz"), "--results", str(results), *OOD]  # fmt: skip


def _tree(root):
    """Every file under root with its bytes: what a refused or failed command must not change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("folder, option", [("in", "--in"), ("ood", "--out"), (".", "--model")])
def test_results_holding_an_input_is_refused(files, capsys, folder, option):
    (files / folder / "report.json").write_text("{}")  # a run's file: --overwrite would have replaced it
    before = _tree(files)
    line = one_error_line([*_argv(files, files / folder), "--overwrite"], capsys)
    assert line.startswith("fastadv ood: error: --results: ") and f"the {option} input" in line, line
    assert _tree(files) == before


def test_results_inside_an_input_is_refused(files, capsys):
    before = _tree(files)
    line = one_error_line(_argv(files, files / "model.pt" / "r"), capsys)
    assert "--results: " in line, line
    assert _tree(files) == before


def test_a_failed_overwrite_keeps_the_old_report(files, capsys, monkeypatch):
    results = files / "r"
    argv = _argv(files, results)
    argv.remove("--no-plots")
    assert main(argv) == 0
    old = _tree(results)
    assert set(old) == {"report.json", "ood.png"} and json.loads(old["report.json"])["samples"]["in"] == 48

    import fastadv.evaluation.plots

    def fails(*args, **kwargs):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(fastadv.evaluation.plots, "plot_ood", fails)
    with pytest.raises(RuntimeError, match="the plot failed"):  # after report.json was written
        main([*argv, "--limit", "16", "--overwrite"])
    assert _tree(results) == old, "the failed run changed the old one, or left files"
    monkeypatch.undo()
    assert main([*argv, "--limit", "16", "--overwrite"]) == 0
    assert json.loads((results / "report.json").read_text())["samples"]["in"] == 16
    assert sorted(os.listdir(results)) == ["ood.png", "report.json"]
    assert one_error_line(argv, capsys) == (
        f"fastadv ood: error: --results: {results} holds a run (ood.png, report.json); --overwrite replaces it"
    )
    # a run without plots replaces the whole old run: no old ood.png beside the new report
    assert main([*argv, "--limit", "8", "--overwrite", "--no-plots"]) == 0
    assert sorted(os.listdir(results)) == ["report.json"]


# A run of `fastadv ood` that stops once its inputs are checked, until the test closes its stdin.
HOLDER = textwrap.dedent("""
    import sys
    import fastadv.cli.ood_cmd as ood_cmd
    from fastadv.__main__ import main

    real = ood_cmd.detect_ood

    def held(*args, **kwargs):
        print("running", flush=True)
        sys.stdin.read()
        return real(*args, **kwargs)

    ood_cmd.detect_ood = held
    sys.exit(main(sys.argv[1:]))
""")


def test_a_second_run_into_the_same_results_is_refused(files, capsys):
    results = files / "busy"
    argv = _argv(files, results)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-c", HOLDER, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)  # fmt: skip
    try:
        assert first.stdout.readline().strip() == "running"
        line = one_error_line(argv, capsys)
        assert line.startswith("fastadv ood: error: --results: another fastadv run") and str(results) in line, line
    finally:
        first.stdin.close()
        first.wait(timeout=120)
    assert first.returncode == 0 and json.loads((results / "report.json").read_text())["samples"]["out"] == 32
