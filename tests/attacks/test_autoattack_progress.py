"""Progress inside an AutoAttack stage: the steps of APGD's restarts, APGD-T's and FAB-T's target
classes, Square's queries reach `on_stage_progress` (and the command line's bar) in order, at most
every `progress.INTERVAL` seconds, without changing any number of the run."""

import json

import numpy as np
import pytest
import torch

import fastadv.attacks.progress as progress
from fastadv import models
from fastadv.__main__ import main
from fastadv.attacks.autoattack import AutoAttack
from fastadv.attacks.progress import Ticker

STAGES = ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:16], y[:16]


def _cheap(model, **kwargs):
    """The standard version's four stages with few steps and queries (custom: 5 restarts each)."""
    return AutoAttack(model, eps=0.1, version="custom", attacks_to_run=STAGES, steps=3, n_queries=30, log=None,
                      **kwargs)  # fmt: skip


def test_the_ticker_reports_at_most_every_interval(monkeypatch):
    """A clock that moves 0.1 s per read: with INTERVAL 0.5 s, every fifth step and the last."""
    clock = iter(np.arange(0, 100, 0.1).tolist())
    monkeypatch.setattr(progress, "perf_counter", lambda: next(clock))
    calls = []
    ticker = Ticker(lambda *a: calls.append(a), 42, "steps")  # (reads the clock once: 0.0)
    ticker.run(0)
    for i in range(1, 21):
        ticker.step(i)
    ticker.run(20, per_step=2)  # a run of two target classes at once
    for i in range(1, 12):
        ticker.step(i)
    assert [done for done, _, _ in calls] == [5, 10, 15, 20, 30, 40, 42]
    assert {(total, unit) for _, total, unit in calls} == {(42, "steps")}
    silent = Ticker(None, 10, "steps")  # no hook: no clock read, no call
    monkeypatch.setattr(progress, "perf_counter", lambda: pytest.fail("the clock was read"))
    silent.run(0)
    silent.step(10)


def test_every_stage_reports_its_loop_in_order_and_the_numbers_stay(digits, monkeypatch):
    model, x, y = digits
    quiet = _cheap(model).run(x, y, batch_size=10)
    monkeypatch.setattr(progress, "INTERVAL", 0.0)  # every step reported
    events = []  # both hooks, in the order they were called
    attack = _cheap(model)
    loud = attack.run(x, y, batch_size=10, on_stage_progress=lambda *a: events.append(("inside", *a)),
                      on_progress=lambda *a: events.append(("bar", *a)))  # fmt: skip
    calls = [e[1:] for e in events if e[0] == "inside"]
    bars = [e[1:] for e in events if e[0] == "bar"]
    for field in ("adv", "robust", "predicted", "non_finite", "confidence"):
        assert torch.equal(getattr(loud, field), getattr(quiet, field)), field
    assert [(s.name, s.attacked, s.fooled) for s in loud.stages] == [(s.name, s.attacked, s.fooled)
                                                                     for s in quiet.stages]  # fmt: skip
    assert all(stage.progress_hook is None for _, stage in attack.stages), "the run's hooks are removed"
    # the stages' totals: restarts x steps (x target classes); Square's restarts x queries
    stage = dict(attack.stages)
    totals = {"apgd-ce": (stage["apgd-ce"].n_restarts * 3, "steps"),
              "apgd-t": (stage["apgd-t"].n_target_classes * stage["apgd-t"].n_restarts * 3, "steps"),
              "fab-t": ((stage["fab-t"].n_classes - 1) * stage["fab-t"].n_restarts * 3, "steps"),
              "square": (stage["square"].n_restarts * 30, "queries")}  # fmt: skip
    assert totals["apgd-t"][0] == totals["fab-t"][0] == 27, "each of the 9 target classes counts"
    names = [name for name, *_ in calls]
    ran = [s.name for s in loud.stages if s.attacked]
    assert sorted(set(names), key=names.index) == ran, "reported in the stages' order, each that ran"
    for name in ran:
        mine = [(done, total, unit) for n, done, total, unit in calls if n == name]
        assert {(total, unit) for _, total, unit in mine} == {totals[name]}
        # within a stage's batch `done` only grows; it starts again at the next batch
        batches, last = 1, 0
        for done, total, _ in mine:
            assert 0 < done <= total
            if done <= last:
                batches += 1
            last = done
        chunks = sum(1 for n, done, _ in bars if n == name and done > 0)
        assert batches <= chunks
        # inside the stage's bar: after it opened (done 0), before its last batch ended
        opened = events.index(("bar", name, 0, stage_total := bars[[b[0] for b in bars].index(name)][2]))
        closed = events.index(("bar", name, stage_total, stage_total))
        inside = [i for i, e in enumerate(events) if e[0] == "inside" and e[1] == name]
        assert opened < min(inside) and max(inside) < closed


def test_the_command_line_bar_shows_the_steps_inside_a_stage(digits, tmp_path, capsys, monkeypatch):
    """The stage's bar moves only between batches (one batch here); its postfix follows the loop.
    The report's numbers are those of a quiet run."""
    model, x, y = digits
    models.save(model, str(tmp_path / "model.pt"))
    np.savez(tmp_path / "data.npz", x=x[:6].numpy(), y=y[:6].numpy())
    argv = ["eval", "--model", str(tmp_path / "model.pt"), "--data", str(tmp_path / "data.npz"), "--attacks",
            "autoattack", "--eps", "0.3", "--no-plots", "--workers", "0"]  # fmt: skip
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    assert main([*argv, "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    shown = [int(part.split("/")[0]) for part in err.split("steps ")[1:]]
    assert shown, "the bar's postfix names the steps done"
    assert shown == sorted(shown), "in order"
    bars = err.replace("\r", "\n").splitlines()
    assert any(line.startswith("apgd-ce:") and "steps 1/100]" in line for line in bars), "APGD-CE's 100 steps"
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    loud, quiet = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("loud", "quiet"))
    for row_loud, row_quiet in zip(loud["attacks"], quiet["attacks"], strict=True):
        for key in ("robust_accuracy", "success_rate", "samples_attacked", "ece", "mean_linf"):
            assert row_loud[key] == row_quiet[key], key
    assert loud["clean_accuracy"] == quiet["clean_accuracy"]
