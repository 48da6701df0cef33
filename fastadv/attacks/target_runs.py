"""The runs of a multi-targeted attack (APGD-T, FAB-T): the target classes by rank, each run on
the samples not yet fooled, several target classes side by side in one batch when asked.

One batch of `group` target classes holds (sample, target) pairs round-major: pair p is sample
``owner[p] = todo[p % n]`` attacked towards its target of rank ``rank + p // n``. Pairs share the
model's batch, so fewer and larger calls replace one small call per target class; the callers
merge a run's pairs per sample in rank order, as the one-at-a-time runs would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch


@dataclasses.dataclass(frozen=True)
class TargetRun:
    """One run: restart `restart` of the target classes of ranks rank .. rank + group - 1."""

    rank: int
    group: int
    restart: int
    todo: torch.Tensor  # [n] the samples attacked (not yet fooled when the run starts)
    owner: torch.Tensor  # [group * n] the sample of each pair
    column: torch.Tensor  # [group * n] the rank of each pair's target class

    def runs_before(self, n_restarts: int) -> int:
        """How many single-target runs the ones before this stand for (for progress counts)."""
        return self.rank * n_restarts + self.restart * self.group


def target_runs(
    rounds: int, n_restarts: int, pairs: int | None, survivors: Callable[[], torch.Tensor]
) -> Iterator[TargetRun]:
    """Yields the runs over `rounds` target classes, `n_restarts` each. `survivors()` gives the
    indices of the samples not yet fooled; it is asked again after the caller has taken each
    run's result, and the runs stop once it is empty. `pairs` (the attack's `target_batch`, None:
    one target class at a time) bounds the pairs per batch: as many target classes side by side
    as fit for the samples left, at least one."""
    rank = 0
    while rank < rounds:
        todo = survivors()  # one host sync per run
        if todo.numel() == 0:
            return
        group = 1 if pairs is None else max(1, min(rounds - rank, pairs // todo.numel()))
        for restart in range(n_restarts):
            if restart > 0:
                todo = survivors()  # restarts attack the survivors only
                if todo.numel() == 0:
                    return
            column = torch.arange(rank, rank + group, device=todo.device).repeat_interleave(todo.numel())
            yield TargetRun(rank, group, restart, todo, todo.repeat(group), column)
        rank += group
