"""The float32 L2 step's two schedules on the CPU (csrc/cpu/step_cpu_loops.h): the passes pipelined
across samples (l2_float_samples) or run sample by sample (l2_sample). Each build times both at its
first float32 L2 step and keeps the faster; FASTADV_CPU_L2_PIPELINE=on|off forces one. Both must
give the same bits on every input the other path sees: several samples per thread (the pipeline's
first and last samples), a sample whose gradient's sum of squares leaves float32's range in the
middle of a batch (it leaves the pipeline), per-sample eps (rescaled and not), targeted, in place,
channels_last, one and two threads, NaN and infinite gradient entries. And each must match the
reference to the contract's tolerance."""

import zlib

import pytest
import torch
from support.backends import require_backend
from support.compare import assert_close, assert_exact
from support.op_inputs import make_inputs

import fastadv
from fastadv.backends import cpu_backend

ENV = "FASTADV_CPU_L2_PIPELINE"
# CIFAR-size samples, samples larger than a kL2Block (2048) and than the parallel grain, odd sizes.
SHAPES = [(9, 3, 32, 32), (4, 3, 40, 41), (3, 3, 100, 111), (7, 1, 7, 5), (5, 70000)]


def _cases(gen):
    for shape in SHAPES:
        for layout in ("contiguous", "channels_last") if len(shape) == 4 else ("contiguous",):
            for variant in ("plain", "out_of_range", "per_sample_eps"):
                x_adv, grad, x = make_inputs(shape, torch.float32, torch.float32, "cpu", layout, gen)
                # Infinite entries in every sample would send every sample out of the pipeline: keep
                # the NaN entries (counted as zeros in the pipeline's sums), drop the infinities.
                grad = torch.where(torch.isinf(grad), torch.zeros_like(grad), grad)
                if variant == "out_of_range":  # one sample overflows, one has an infinite entry, one underflows
                    grad[shape[0] // 2].mul_(1e25)
                    grad[(1,) + (0,) * (len(shape) - 1)] = float("inf")
                    grad[-1].mul_(1e-30)
                eps = torch.rand(shape[0], generator=gen) * 3 if variant == "per_sample_eps" else 0.5
                yield f"{shape} {layout} {variant}", x_adv, grad, x, eps


def _outputs(gen_seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(case, output, reference) for every case, targeted and not, and in place."""
    gen = torch.Generator().manual_seed(gen_seed)
    results = []
    for name, x_adv, grad, x, eps in _cases(gen):
        for targeted in (False, True):
            args = (x_adv, grad, x, eps, 0.3, 0.0, 1.0)
            actual = fastadv.l2_step(*args, targeted=targeted, backend="cpu")
            expected = fastadv.l2_step(*args, targeted=targeted, backend="torch")
            results.append((f"{name} targeted={targeted}", actual, expected))
        in_place = x_adv.clone()
        fastadv.l2_step(in_place, grad, x, eps, 0.3, 0.0, 1.0, out=in_place, backend="cpu")
        results.append((f"{name} in place", in_place, fastadv.l2_step(x_adv, grad, x, eps, 0.3, backend="torch")))
    return results


@pytest.mark.parametrize("threads", (1, 2))
def test_both_schedules_give_the_same_bits(isa, threads, monkeypatch):
    seed = zlib.crc32(f"pipeline{isa}{threads}".encode())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        by_setting = {}
        for setting, pipelined in (("on", True), ("off", False)):
            monkeypatch.setenv(ENV, setting)
            assert cpu_backend.cpu_l2_pipelined() is pipelined, f"{ENV}={setting}"
            by_setting[setting] = _outputs(seed)
    finally:
        torch.set_num_threads(previous)
    for (case, on, expected), (_, off, _) in zip(by_setting["on"], by_setting["off"], strict=True):
        assert_exact(on, off, f"{isa} {threads} threads {case}: pipelined vs sample by sample")
        assert_close(on, expected, f"{isa} {threads} threads {case}")


def test_auto_measures_once_and_keeps_its_choice(isa, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    choice = cpu_backend.cpu_l2_pipelined()
    assert isinstance(choice, bool)
    x = torch.rand(6, 3, 32, 32)
    fastadv.l2_step(x, torch.randn(6, 3, 32, 32), x, 0.5, 0.1, backend="cpu")
    monkeypatch.setenv(ENV, "auto")
    assert cpu_backend.cpu_l2_pipelined() is choice


def test_bad_setting_is_refused_naming_the_variable(monkeypatch):
    require_backend("cpu", "cpu")
    monkeypatch.setenv(ENV, "sometimes")
    message = f"{ENV} must be on, off or auto, got 'sometimes'"
    with pytest.raises(RuntimeError, match=message):
        cpu_backend.cpu_l2_pipelined()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match=message):
        fastadv.l2_step(x, x, x, 0.5, 0.1, backend="cpu")
    # Only float32 steps read it: other dtypes and the projections run as before.
    fastadv.l2_step(x.half(), x.half(), x.half(), 0.5, 0.1, backend="cpu")
    fastadv.l2_project(x, x, 0.5, backend="cpu")
