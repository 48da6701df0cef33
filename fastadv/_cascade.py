"""AutoAttack's cascade: attacks run in order, each on the samples still robust (those no earlier
attack fooled), in chunks; a sample an attack fools stops being robust.

Its users: `fastadv.attacks.autoattack.AutoAttack.run` (the stages of every version, AutoAttackLite's
included), and `fastadv.evaluation`, whose attacks at one eps are a cascade (or, with
``cascade=False``, each on every sample: ``survivors_only=False``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

S = TypeVar("S")


@dataclass(frozen=True)
class StageRun:
    """One stage of a cascade. index: the samples it attacked (int64 indices); fooled: bool over
    index, fooled by this stage; newly: bool over index, fooled by this stage and by no earlier
    one (the same as fooled when only the survivors are attacked)."""

    index: torch.Tensor
    fooled: torch.Tensor
    newly: torch.Tensor


def run_cascade(
    stages: Sequence[S],
    robust: torch.Tensor,
    attack: Callable[[S, torch.Tensor], torch.Tensor],
    *,
    batch_size: int | None = None,
    survivors_only: bool = True,
    on_chunk: Callable[[S, int, int, torch.Tensor, torch.Tensor], None] | None = None,
    on_stage: Callable[[S, StageRun], None] | None = None,
) -> list[StageRun]:
    """Runs `stages` in order on the samples of `robust` (bool [N], updated in place: a fooled
    sample turns False).

    attack(stage, index) attacks the samples `index` and returns which it fooled (bool over
    index); each stage attacks the samples still robust (survivors_only=False: those robust at
    the start, every stage all of them), `batch_size` at a time (None: all at once), and no call
    is made for a stage with nothing to attack. on_chunk(stage, chunk, chunks, index, fooled)
    follows each call; on_stage(stage, run) each stage, with `robust` as the stage left it.
    """
    start = robust.clone()
    runs = []
    for stage in stages:
        todo = (robust if survivors_only else start).nonzero().squeeze(1)
        size = batch_size or max(1, todo.numel())
        chunks = max(1, -(-todo.numel() // size))
        fooled_parts, newly_parts = [], []
        for chunk in range(chunks):
            index = todo[chunk * size : (chunk + 1) * size]
            if index.numel() == 0:
                break
            fooled = attack(stage, index)
            newly_parts.append(fooled & robust[index])
            fooled_parts.append(fooled)
            robust[index[fooled]] = False
            if on_chunk is not None:
                on_chunk(stage, chunk, chunks, index, fooled)
        empty = torch.zeros(0, dtype=torch.bool, device=robust.device)
        run = StageRun(todo, torch.cat(fooled_parts) if fooled_parts else empty,
                       torch.cat(newly_parts) if newly_parts else empty)  # fmt: skip
        runs.append(run)
        if on_stage is not None:
            on_stage(stage, run)
    return runs
