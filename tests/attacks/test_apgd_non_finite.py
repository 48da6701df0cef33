"""APGD's early stopping counts fooling as its result does: a non-finite iterate never fools the
model, so the sample stays in the batch and ends at its best finite point (fastadv's ops keep
iterates finite, so a backend that writes NaN into one sample's step stands in for the fault)."""

import torch

import fastadv
from fastadv.backends import BACKENDS, torch_backend


class _NaNStepOnce:
    """The reference backend, except that its `at`-th L-inf step writes NaN into sample 0."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __getattr__(self, name):
        return getattr(torch_backend, name)

    def linf_step_into(self, *args):
        result = torch_backend.linf_step_into(*args)
        self.calls += 1
        if self.calls == self.at:
            args[-1][0] = float("nan")  # `out`
        return result


def test_a_nan_iterate_does_not_stop_the_sample_early(monkeypatch, digits_model):
    model, x, y = digits_model
    # a sample the model classifies as some class other than 0 (argmax of a NaN row is 0: the
    # NaN iterate looks like a misclassification), still robust after a few steps at a small eps
    x, y = x[:16], y[:16]
    monkeypatch.setitem(BACKENDS, "nan-once", _NaNStepOnce(at=2))
    attack = fastadv.APGD(model, eps=0.01, steps=6, early_stop=True, backend="nan-once")
    result = attack.run(x, y)
    clean = fastadv.APGD(model, eps=0.01, steps=6, early_stop=True, backend="torch").run(x, y)
    assert int(y[0]) != 0 and not bool(clean.success[0]), "the setting leaves sample 0 robust"
    assert bool(result.non_finite[0]) and not bool(result.success[0])
    # it went on to its last step and returns its best finite point, with that point's loss
    assert bool(torch.isfinite(result.loss[0])) and bool(result.adv[0].isfinite().all())
    assert int(result.steps_used[0]) == int(clean.steps_used[0]) == 7
    assert not torch.equal(result.adv[0], x[0])
