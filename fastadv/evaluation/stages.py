"""The batch an evaluation is on, seen stage by stage: AutoAttack's log and a progress bar per
stage, and the record that lets a stopped evaluation continue from AutoAttack's last finished
stage instead of the batch's start.

An AutoAttack batch can take many minutes (its four stages, their restarts and target classes),
so the evaluation's state (saved after every batch) is also saved after every stage with a
record of the batch so far: the outcomes of the attacks that finished in it, and the
:class:`fastadv.attacks.autoattack.AutoAttackState` of the AutoAttack running. A resumed evaluation runs
the batch again, takes each finished attack's outcome from the record instead of attacking, and
continues the AutoAttack from its state: the same report as a run never stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..attacks.autoattack import AutoAttackState


class BatchStages:
    """The record of the batch being evaluated, and how its AutoAttack stages are shown.

    show: print AutoAttack's log (the original's lines, under a line naming the batch and eps)
    and a progress bar per stage (tqdm). saved: the record a resumed evaluation's state holds
    (its batch is the first the evaluation runs), or None.
    """

    def __init__(self, show: bool, saved: dict | None = None):
        self.show = show
        self._pending = saved
        self._record: dict = {"batch": -1, "done": {}, "running": None}
        self._save: Callable[[dict], Any] | None = None
        self._bar: Any = None

    def start(self, batch_index: int, save: Callable[[dict], Any] | None) -> None:
        """A new batch: save(record) writes the evaluation's state with the record (None: no state file)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending["batch"] == batch_index:
            self._record = pending
        else:
            self._record = {"batch": batch_index, "done": {}, "running": None}
        self._save = save

    def finished(self, key: str) -> dict | None:
        """The outcome recorded for attack `key` of this batch, or None: it has to run."""
        return self._record["done"].get(key)

    def done(self, key: str, outcome: dict) -> None:
        """Attack `key` of this batch finished with `outcome` (tensors, numbers, None)."""
        self._record["done"][key] = outcome
        running = self._record["running"]
        if running is not None and running["key"] == key:
            self._record["running"] = None

    def write(self, line: str) -> None:
        """A log line, printed above the progress bars."""
        from tqdm import tqdm

        tqdm.write(line)

    @contextlib.contextmanager
    def autoattack(self, key: str, targets: torch.Tensor, images: torch.Tensor, title: str) -> Iterator[dict]:
        """The keyword arguments of AutoAttack.run for attack `key` on the samples `targets` of
        the batch (their clean `images`): the state to resume from, if the record holds one for
        the same samples, the progress bars, and saving the state after each stage."""
        hooks: dict[str, Any] = {}
        running = self._record["running"]
        targets = targets.cpu()
        if running is not None and running["key"] == key and torch.equal(running["targets"], targets):
            hooks["resume"] = AutoAttackState.from_dict(running["state"], images)
        if self._save is not None:

            def stage_end(state: AutoAttackState) -> None:
                self._record["running"] = {"key": key, "targets": targets, "state": state.to_dict()}
                self._save(self._record)

            hooks["on_stage_end"] = stage_end
        if self.show:
            self.write(title)
            hooks["on_progress"] = self._progress
            hooks["on_stage_progress"] = self._inside
        try:
            yield hooks
        finally:
            self._close_bar()

    def _progress(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if done == 0:
            self._close_bar()
            self._bar = tqdm(total=total, desc=stage, unit="img", leave=False)
        elif self._bar is not None:
            self._bar.update(done - self._bar.n)
        if done >= total:
            self._close_bar()

    def _inside(self, stage: str, done: int, total: int, unit: str) -> None:
        """How far the stage's loop is inside the batch (AutoAttack reports it a few times a
        second at most): shown after the stage's bar, which moves only when a batch ends."""
        if self._bar is not None:
            self._bar.set_postfix_str(f"{unit} {done}/{total}")

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
