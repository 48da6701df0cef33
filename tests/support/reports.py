"""evaluate() reports: equality less the timings, and a run interrupted at a given batch (what a
resumed run has to finish)."""

from __future__ import annotations

import pytest


def assert_same_report(a: dict, b: dict) -> None:
    """Two evaluate() reports agree on everything but timings: samples, clean accuracy, worst
    case and every attack's row (its images/s aside)."""
    assert a["samples"] == b["samples"] and a["clean_accuracy"] == b["clean_accuracy"]
    assert a["worst_case"] == b["worst_case"]
    for ra, rb in zip(a["attacks"], b["attacks"], strict=True):
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == {
            k: v for k, v in rb.items() if k != "images_per_s"
        }


def interrupt_at_batch(monkeypatch, number: int, run) -> None:
    """Calls run() with evaluate's per-batch step raising KeyboardInterrupt at batch `number`
    (as a user's Ctrl-C there would), checks that it did, and puts the real step back: what a
    resumed run then has to finish from its state file."""
    import fastadv.evaluation.engine as ev

    real, calls = ev._evaluate_batch, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "_evaluate_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(ev, "_evaluate_batch", real)


def without_timings(report):
    """A JSON report (evaluate's, or anything holding reports) less what depends on the clock:
    time stamps, data-loading waits and images/s, at every depth; as JSON would give it back."""
    import json

    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k not in ("timestamp", "data_loading", "images_per_s")}
        return [drop(v) for v in value] if isinstance(value, list) else value

    return drop(json.loads(json.dumps(report)))
