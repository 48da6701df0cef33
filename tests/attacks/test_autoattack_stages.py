"""AutoAttack stage by stage: run()'s progress and stage-end hooks, a run continued from any
stage's state equal to the whole run, an evaluation stopped in the middle of an AutoAttack batch
resumed from its last finished stage with the uninterrupted report, and the command line's
per-stage log and progress bars."""

import io
import json

import numpy as np
import pytest
import torch
from support.reports import assert_same_report

import fastadv
import fastadv.attacks.catalog as catalog
import fastadv.evaluation.resume as resume_state
from fastadv import models
from fastadv.__main__ import main
from fastadv.attacks.autoattack import AutoAttack, AutoAttackState
from fastadv.evaluation import evaluate

STAGES = ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:32], y[:32]


def _cheap(model, **kwargs):
    """The standard version's four stages with few steps and queries."""
    return AutoAttack(model, eps=0.1, version="custom", attacks_to_run=STAGES, steps=3, n_queries=30, **kwargs)


def _rows(stages):
    return [(s.name, s.attacked, s.fooled, s.robust_accuracy) for s in stages]


def _same(a, b):
    assert torch.equal(a.adv, b.adv) and torch.equal(a.robust, b.robust)
    assert torch.equal(a.predicted, b.predicted) and torch.equal(a.non_finite, b.non_finite)
    assert _rows(a.stages) == _rows(b.stages)


def _saved(state: AutoAttackState, images: torch.Tensor) -> AutoAttackState:
    """The state through a file, as the evaluation keeps it."""
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    return AutoAttackState.from_dict(torch.load(buffer, weights_only=True), images)


@pytest.mark.parametrize("seed", [0, None])
def test_a_run_continued_from_any_stage_equals_the_whole_run(digits, seed):
    """seed=None: the stages draw from the global generator, whose state the stage's end saved."""
    model, x, y = digits
    states, progress = [], []
    torch.manual_seed(7)  # (seed=None: FAB's seed is drawn when the attack is built)
    whole = _cheap(model, seed=seed).run(x, y, batch_size=20, on_stage_end=states.append,
                                         on_progress=lambda *a: progress.append(a))  # fmt: skip
    assert [s.next_stage for s in states] == [1, 2, 3, 4] and [s.stage for s in states] == STAGES
    assert whole.stages[0].fooled > 0 and whole.stages[-1].robust_accuracy > 0, "every stage has work"
    for stage in whole.stages:  # a bar per stage that attacked something: 0, then after each chunk
        calls = [(done, total) for name, done, total in progress if name == stage.name]
        if stage.attacked:
            assert calls[0] == (0, stage.attacked) and calls[-1] == (stage.attacked, stage.attacked)
            assert len(calls) == 1 + -(-stage.attacked // 20)
    for state in states[:-1]:
        torch.manual_seed(7)
        lines = []
        again = _cheap(model, seed=seed, verbose=True, log=lines.append)
        torch.manual_seed(123)  # whatever the global generator holds now: the state's is restored
        _same(again.run(x, y, batch_size=20, resume=_saved(state, x)), whole)
        assert f"resumed after {state.stage.upper()}: robust accuracy {float(state.robust.float().mean()):.2%}" in lines
        assert not any(line.startswith(f"{name} - ") for name in STAGES[: state.next_stage] for line in lines), (
            "a finished stage runs again"
        )


def test_a_state_of_another_run_is_refused(digits):
    model, x, y = digits
    states = []
    AutoAttack(model, eps=0.1, version="custom", attacks_to_run=["apgd-ce"], steps=2).run(
        x, y, on_stage_end=states.append
    )
    with pytest.raises(ValueError, match="resume: a state of the stages apgd-ce, not of apgd-ce, apgd-t"):
        _cheap(model).run(x, y, resume=states[0])
    with pytest.raises(ValueError, match="resume: a state of 32 samples"):
        AutoAttack(model, eps=0.1, version="custom", attacks_to_run=["apgd-ce"]).run(x[:8], y[:8], resume=states[0])
    with pytest.raises(ValueError, match="resume: a state of 32 samples"):
        AutoAttackState.from_dict(states[0].to_dict(), x[:8])


def _cheap_in_evaluate(monkeypatch):
    """evaluate's "autoattack" with _cheap's budgets (its own are minutes per batch)."""
    cheap = catalog.AttackEntry(
        "linf",
        AutoAttack,
        {
            "norm": "Linf",
            "eps": catalog.EPS,
            "version": "custom",
            "attacks_to_run": STAGES,
            "steps": 3,
            "n_queries": 30,
        },
        "seed",
    )
    monkeypatch.setitem(catalog.ATTACKS, "autoattack", cheap)


def test_an_evaluation_stopped_mid_autoattack_resumes_from_the_last_stage(digits, tmp_path, monkeypatch):
    """Stopped after APGD-T of the second batch at the second eps (the state file is written
    there): the resumed run starts that batch's AutoAttack at FAB-T, takes the outcomes of the
    attacks that finished in the batch from the state, and reports what the whole run reports."""
    model, x, y = digits
    _cheap_in_evaluate(monkeypatch)
    args = dict(attacks=["fgsm", "autoattack"], eps=[0.05, 0.1], batch_size=12, progress=False)
    whole = evaluate(model, (x, y), **args)
    state = str(tmp_path / "state.pt")
    real_save = resume_state.save_atomic

    def save_then_stop(obj, path):
        real_save(obj, path)
        running = (obj.get("partial") or {}).get("running")
        if obj["next_batch"] == 1 and running and running["key"] == "1/1" and running["state"]["next_stage"] == 2:
            raise KeyboardInterrupt  # as a kill right after the state was written

    monkeypatch.setattr(resume_state, "save_atomic", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, (x, y), state_path=state, **args)
    monkeypatch.setattr(resume_state, "save_atomic", real_save)
    runs, fgsm_runs, real_run, real_fgsm = [], [], AutoAttack.run, fastadv.FGSM.run

    def recorded(self, images, labels, batch_size=250, **hooks):
        runs.append(hooks.get("resume"))
        return real_run(self, images, labels, batch_size, **hooks)

    monkeypatch.setattr(AutoAttack, "run", recorded)
    monkeypatch.setattr(fastadv.FGSM, "run", lambda self, *a, **k: fgsm_runs.append(1) or real_fgsm(self, *a, **k))
    resumed = evaluate(model, (x, y), state_path=state, **args)
    assert_same_report(resumed, whole)
    assert runs[0] is not None and runs[0].next_stage == 2 and runs[0].stage == "apgd-t", "not from the batch's start"
    assert len(runs) == 1 + 2 * 1 and all(r is None for r in runs[1:]), "batch 1's eps 0.05 ran again"
    assert len(fgsm_runs) == 2, "the third batch's FGSM only: the second's came from the state"
    assert "partial" not in torch.load(state, weights_only=True), "a finished run's state ends with its last batch"


def test_the_command_line_prints_each_stage(digits, tmp_path, capsys):
    """The standard AutoAttack at a large eps on an undefended model: APGD-CE fools every sample,
    the later stages have nothing left (seconds)."""
    model, x, y = digits
    models.save(model, str(tmp_path / "model.pt"))
    np.savez(tmp_path / "data.npz", x=x[:6].numpy(), y=y[:6].numpy())
    argv = ["eval", "--model", str(tmp_path / "model.pt"), "--data", str(tmp_path / "data.npz"), "--attacks",
            "autoattack", "--eps", "0.3", "--no-plots", "--workers", "0"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "loud")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    clean = json.loads((tmp_path / "loud" / "report.json").read_text())["clean_accuracy"]
    correct = round(clean * 6)
    start = lines.index(f"autoattack at eps 0.3 on batch 1: {correct} samples")
    assert lines[start + 1 : start + 3] == ["using standard version including apgd-ce, apgd-t, fab-t, square.",
                                            "initial accuracy: 100.00%"]  # fmt: skip
    for name in ("APGD-CE", "APGD-T", "FAB-T", "SQUARE"):
        assert any(line.startswith(f"robust accuracy after {name}: 0.00% (total time ") for line in lines), name
    assert f"apgd-ce:   0%|          | 0/{correct}" in captured.err, "APGD-CE's progress bar"
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "robust accuracy after" not in captured.out and "apgd-ce" not in captured.err


_RUN = """
import json, sys, time, torch
import fastadv.evaluation as ev
import fastadv
import fastadv.attacks.catalog as catalog
from fastadv import models
from fastadv.attacks.autoattack import AutoAttack
from fastadv.data import digits
torch.set_num_threads(1)
catalog.ATTACKS["autoattack"] = catalog.AttackEntry("linf", AutoAttack, {
    "norm": "Linf", "eps": catalog.EPS, "version": "custom",
    "attacks_to_run": ["apgd-ce", "apgd-t", "fab-t", "square"], "steps": 3, "n_queries": 30}, "seed")
model = models.load(sys.argv[3])
forward = model.forward
model.forward = lambda t: (time.sleep(0.005), forward(t))[1]  # stages of a second or more: time to kill one
x, y = digits("test")
report = ev.evaluate(model, (x[:32], y[:32]), ["fgsm", "autoattack"], [0.1], batch_size=12, progress=False,
                     state_path=sys.argv[1] or None)
json.dump(report, open(sys.argv[2], "w"))
"""


def _stage_of(path):
    """(batch, AutoAttack stages finished) of the state file, (-1, 0) before there is one."""
    try:
        saved = torch.load(path, weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1, 0
    running = (saved.get("partial") or {}).get("running")
    return saved["next_batch"], running["state"]["next_stage"] if running else 0


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_batch_resumes_from_its_last_stage(digits, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    model_path = str(tmp_path / "model.pt")
    models.save(digits[0], model_path)
    state, killed, straight = str(tmp_path / "state.pt"), str(tmp_path / "killed.json"), str(tmp_path / "straight.json")
    process = subprocess.Popen([sys.executable, "-c", _RUN, state, killed, model_path])
    deadline = time.time() + 600
    while _stage_of(state) < (1, 2) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    batch, stage = _stage_of(state)
    assert batch == 1 and stage >= 2, "killed in the second batch, after its APGD-T"
    subprocess.run([sys.executable, "-c", _RUN, state, killed, model_path], check=True)  # resumes
    subprocess.run([sys.executable, "-c", _RUN, "", straight, model_path], check=True)
    resumed, whole = (json.load(open(path)) for path in (killed, straight))
    assert_same_report(resumed, whole)
