"""The CUDA-graph attack path and early stopping with compaction every k steps.

On the CPU the graph's buffer handling runs with a capture that calls the step instead of
recording it (`_plain_capture`), and `cuda_graph=True` must fall back to the uncaptured path
with a warning; the `cuda`-marked tests capture real graphs on a GPU."""

import warnings

import pytest
import torch
from support.models import CountingModel, digits_model

import fastadv
from fastadv.attacks._cuda_graph import GraphedSteps
from fastadv.attacks.model_mode import attack_mode

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _plain_capture(step, device):
    for _ in range(2):  # the warm-up runs that the real capture does too
        step()
    return step


def _graphed(attack, x, y, capture=_plain_capture, calls=1):
    """The final iterate through GraphedSteps, prepared exactly as the engine does."""
    with torch.enable_grad():
        x_p, y_p, call = attack._prepare(x, y)
        with attack_mode(attack.model, attack.model_mode):
            graphed = GraphedSteps(attack._graph_step, x_p, y_p, call, capture=capture)
            outputs = []
            for _ in range(calls):
                start = attack._start(x_p, call.params, call)
                outputs.append(graphed(x_p, y_p, start, call, attack.steps))
    return outputs


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:64], y[:64]


@pytest.mark.parametrize(
    "make",
    [
        lambda m, g: fastadv.PGD(m, eps=0.1, alpha=0.02, steps=5, generator=g),
        lambda m, g: fastadv.PGDL2(m, eps=1.0, alpha=0.25, steps=5, generator=g),
        lambda m, g: fastadv.PGD(m, eps=torch.linspace(0.02, 0.2, 64), alpha=0.02, steps=4, generator=g),
        lambda m, g: fastadv.PGD(m, eps=0.1, alpha=0.02, steps=3, targeted=True, generator=g),
        lambda m, g: fastadv.PGD(m, eps=0.1, alpha=0.02, steps=3, amp="bf16", generator=g),
    ],
    ids=["linf", "l2", "per-sample-eps", "targeted", "bf16-autocast"],
)
def test_static_buffers_give_the_uncaptured_images(digits, make):
    model, x, y = digits
    plain = make(model, torch.Generator().manual_seed(0))
    expected = [plain(x, y), plain(x, y)]
    # one graph, two calls (the second from a new random start): the buffers are refreshed
    got = _graphed(make(model, torch.Generator().manual_seed(0)), x, y, calls=2)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_new_inputs_reuse_the_buffers(digits):
    model, x, y = digits
    attack = fastadv.PGD(model, eps=0.1, alpha=0.02, steps=3, random_start=False)
    with torch.enable_grad():
        xa, ya, call_a = attack._prepare(x[:32], y[:32])
        xb, yb, call_b = attack._prepare(x[32:], y[32:])
        graphed = GraphedSteps(attack._graph_step, xa, ya, call_a, capture=_plain_capture)
        out_b = graphed(xb, yb, xb.clone(), call_b, attack.steps)
        out_a = graphed(xa, ya, xa.clone(), call_a, attack.steps)
    assert torch.equal(out_b, attack(x[32:], y[32:])) and torch.equal(out_a, attack(x[:32], y[:32]))
    with pytest.raises(ValueError, match="labels"):
        call_b.label_range = (0, 12)
        graphed(xb, yb, xb.clone(), call_b, 1)


def test_cuda_graph_on_cpu_falls_back_with_one_warning(digits):
    model, x, y = digits
    plain = fastadv.PGD(model, eps=0.1, alpha=0.02, steps=3, generator=torch.Generator().manual_seed(0))
    graphed = fastadv.PGD(model, eps=0.1, alpha=0.02, steps=3, cuda_graph=True,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    with pytest.warns(RuntimeWarning, match="cuda_graph: images are on cpu"):
        first = graphed(x, y)
    assert graphed.graph_status.startswith("uncaptured: images are on cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per reason, not at every call
        second = graphed(x, y)
    assert torch.equal(first, plain(x, y)) and torch.equal(second, plain(x, y))


def test_cuda_graph_reasons_for_stateful_steps_and_tracking(digits):
    model, x, y = digits
    mi = fastadv.MIFGSM(model, eps=0.1, alpha=0.02, steps=2, cuda_graph=True)
    with pytest.warns(RuntimeWarning, match="MIFGSM's step carries state"):
        mi(x, y)
    pgd = fastadv.PGD(model, eps=0.1, alpha=0.02, steps=2, cuda_graph=True, early_stop=True)
    pgd(x, y)
    assert "early stopping" in pgd.graph_status
    assert fastadv.PGD(model).graph_status == "not requested"
    with pytest.raises(TypeError, match="cuda_graph"):
        fastadv.PGD(model, cuda_graph="yes")
    with pytest.raises(ValueError, match="early_stop_every"):
        fastadv.PGD(model, early_stop_every=0)


@pytest.mark.parametrize("every", [3, 5])
def test_compacting_every_k_steps_keeps_the_results(digits, every):
    model, x, y = digits_model()
    x, y = x[:160], y[:160]
    runs = {}
    for k in (1, every):
        counted = CountingModel(model)
        attack = fastadv.PGD(counted, eps=0.1, alpha=0.0125, steps=10, early_stop=True, early_stop_every=k,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
        runs[k] = attack.run(x, y), counted.samples
    (one, samples_one), (k_run, samples_k) = runs[1], runs[every]
    assert torch.equal(one.success, k_run.success)
    same = (one.adv == k_run.adv).flatten(1).all(1)
    assert same.float().mean() >= 0.99, "fooled samples are frozen where they were fooled"
    full = 11 * len(y)  # no early stopping: 10 steps and the final evaluation
    assert samples_one <= samples_k < full


# --- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("options", [{}, {"amp": "bf16", "channels_last": True}], ids=["fp32", "bf16-cl"])
def test_captured_graph_gives_the_uncaptured_images(options):
    model, x, y = digits_model()
    model, x, y = model.cuda(), x.cuda(), y.cuda()

    def make(graph):
        return fastadv.PGD(model, eps=0.1, alpha=0.02, steps=5, cuda_graph=graph,
                           generator=torch.Generator("cuda").manual_seed(0), **options)  # fmt: skip

    plain, graphed = make(False), make(True)
    for status in ("captured", "replayed"):
        got = graphed(x, y)
        assert graphed.graph_status == status
        if not options:
            assert torch.equal(got, plain(x, y))
        else:  # bf16 autocast: same images up to a few flipped signs on ties
            assert (got != plain(x, y)).float().mean() < 1e-3


@pytest.mark.cuda
@needs_gpu
def test_a_model_that_syncs_falls_back():
    inner, x, y = digits_model()
    inner, x, y = inner.cuda(), x[:32].cuda(), y[:32].cuda()

    class Syncing(torch.nn.Module):
        def forward(self, images):
            if images.sum().item() < 0:  # a host sync: illegal during capture
                raise AssertionError
            return inner(images)

    attack = fastadv.PGD(Syncing(), eps=0.1, alpha=0.02, steps=3, cuda_graph=True,
                         generator=torch.Generator("cuda").manual_seed(0))  # fmt: skip
    with pytest.warns(RuntimeWarning, match="capture failed"):
        got = attack(x, y)
    expected = fastadv.PGD(inner, eps=0.1, alpha=0.02, steps=3, generator=torch.Generator("cuda").manual_seed(0))(x, y)
    assert torch.equal(got, expected) and attack.graph_status.startswith("uncaptured: capture failed")
