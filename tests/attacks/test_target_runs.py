"""The runs of the multi-targeted attacks (APGD-T, FAB-T), shared by both: how many target
classes go side by side, on which samples, and when the survivors are asked for."""

import pytest
import torch
from torch import nn

import fastadv
from fastadv.attacks.target_runs import target_runs


def _runs(rounds, n_restarts, pairs, left):
    """Drives target_runs as an attack does: `left` lists, per call of survivors(), the samples
    still robust then. Returns the runs and the number of calls."""
    calls = []

    def survivors():
        calls.append(None)
        return torch.tensor(left[min(len(calls), len(left)) - 1], dtype=torch.long)

    return list(target_runs(rounds, n_restarts, pairs, survivors)), len(calls)


def test_one_target_class_at_a_time_without_pairs():
    runs, calls = _runs(9, 1, None, [[0, 1, 2, 3]])
    assert [(r.rank, r.group, r.restart) for r in runs] == [(k, 1, 0) for k in range(9)]
    assert calls == 9, "one host sync per run"
    assert runs[0].owner.tolist() == [0, 1, 2, 3] and runs[0].column.tolist() == [0, 0, 0, 0]


def test_as_many_target_classes_side_by_side_as_fit_the_samples_left():
    # 4 samples, 10 pairs: 2 target classes per batch; 3 samples left: 3; then 1 sample: the last 4 (of 9)
    runs, calls = _runs(9, 1, 10, [[0, 1, 2, 3], [0, 2, 3], [2]])
    assert [(r.rank, r.group) for r in runs] == [(0, 2), (2, 3), (5, 4)]
    assert calls == 3
    # pairs round-major: pair p is sample todo[p % n] towards the target of rank rank + p // n
    assert runs[1].owner.tolist() == [0, 2, 3] * 3
    assert runs[1].column.tolist() == [2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert runs[1].runs_before(1) == 2


def test_restarts_share_the_group_and_attack_only_the_survivors():
    # survivors asked once for the group and the first restart, then once per further restart
    runs, calls = _runs(4, 2, 8, [[0, 1, 2, 3], [1, 3], [1], [1]])
    assert [(r.rank, r.group, r.restart, r.todo.tolist()) for r in runs] == [
        (0, 2, 0, [0, 1, 2, 3]),
        (0, 2, 1, [1, 3]),
        (2, 2, 0, [1]),
        (2, 2, 1, [1]),
    ]
    assert calls == 4
    assert [r.runs_before(2) for r in runs] == [0, 2, 4, 6], "progress counts single-target runs"


def test_runs_stop_once_every_sample_is_fooled():
    runs, calls = _runs(9, 3, None, [[0, 5], []])
    assert [(r.rank, r.restart) for r in runs] == [(0, 0)]
    assert calls == 2


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda m, tb: fastadv.APGDT(m, eps=0.1, steps=2, n_classes=10, target_batch=tb),
        lambda m, tb: fastadv.FAB(m, eps=0.1, steps=2, multi_targeted=True, n_classes=10, target_batch=tb),
    ],
    ids=["APGDT", "FAB-T"],
)
def test_target_batch_is_checked(make):
    with pytest.raises(ValueError, match="target_batch"):
        make(_model(), 0)
    with pytest.raises(TypeError, match="target_batch"):
        make(_model(), 2.5)
