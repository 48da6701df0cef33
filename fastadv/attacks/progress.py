"""Progress inside one call of an attack: how far its loop is (gradient steps over all runs,
Square's queries), reported to a hook at most every `INTERVAL` seconds.

An AutoAttack stage on a slow model runs for minutes inside one batch (APGD-T: 9 target
classes of 100 steps; Square: 5000 queries); its caller's bar moves only between batches.
`Attack.progress_hook` receives (done, total, unit) from inside the loop instead. The check
per step is a clock read on the host: no tensor is read, nothing waits for the device, and the
hook is called only when `INTERVAL` has passed (and at the end of the loop's work).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

INTERVAL = 0.5  # seconds between two reports (read at each report: a test may set it to 0)

ProgressHook = Callable[[int, int, str], Any]


class Ticker:
    """The progress of one attack call: `total` units (`unit`: "steps", "queries"), of which
    the loop has done `base + i * per_step` after its i-th step in the current run (`step`).
    A run over several samples' target classes at once (APGD-T's target pairs) sets
    `per_step` to their number. Without a hook every method returns at once."""

    def __init__(self, hook: ProgressHook | None, total: int, unit: str):
        self.hook, self.total, self.unit = hook, total, unit
        self.base, self.per_step = 0, 1
        self._last = perf_counter()

    def run(self, base: int, per_step: int = 1) -> None:
        """A new run starts at `base` units done; each of its steps does `per_step`."""
        self.base, self.per_step = base, per_step

    def step(self, i: int) -> None:
        """The run's i-th step (from 1) is done."""
        if self.hook is not None:
            self.at(self.base + i * self.per_step)

    def at(self, done: int) -> None:
        """`done` units are done: reported when INTERVAL has passed since the last report, or
        when the work is complete."""
        if self.hook is None:
            return
        now = perf_counter()
        if now - self._last >= INTERVAL or done >= self.total:
            self._last = now
            self.hook(min(done, self.total), self.total, self.unit)


NO_TICKER = Ticker(None, 0, "")  # (an attack outside a call: nothing to report)
