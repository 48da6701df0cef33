"""FAB (fastadv.FAB): its options and errors, the eps ball and the bounds, the reported norm,
reproducible restarts, targeted and multi-targeted runs, the model's safety, non-finite
gradients, the box-constrained projection against the original's, and agreement with
torchattacks' FAB on the digits CNN."""

import math

import pytest
import torch
from support.model_state import assert_unchanged, snapshot
from support.models import GammaModel
from torchattacks.attacks.fab import FAB as TorchattacksFAB
from torchattacks.attacks.fab import projection_l2, projection_linf

import fastadv
from fastadv.attacks.boundary_projection import project_onto_hyperplane


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:32], y[:32]


def _size(d, norm):
    d = d.flatten(1).float()
    return d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)


BAD_OPTIONS = [
    ({"steps": 0}, ValueError, "steps"),
    ({"steps": 2.0}, TypeError, "steps"),
    ({"eps": -0.1}, ValueError, "eps"),
    ({"norm": "L1"}, ValueError, "norm"),
    ({"norm": "Lzero"}, ValueError, "norm"),
    ({"n_classes": 1}, ValueError, "n_classes"),
    ({"n_restarts": 0}, ValueError, "n_restarts"),
    ({"alpha_max": 1.5}, ValueError, "alpha_max"),
    ({"alpha_max": -0.1}, ValueError, "alpha_max"),
    ({"eta": 0.99}, ValueError, "eta"),
    ({"beta": 1.1}, ValueError, "beta"),
    ({"beta": -0.5}, ValueError, "beta"),
    ({"seed": "0"}, TypeError, "seed"),
    ({"verbose": 1}, TypeError, "verbose"),
    ({"multi_targeted": True, "targeted": True}, ValueError, "multi_targeted"),
    ({"early_stop": True}, fastadv.UnsupportedOption, "early_stop"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_OPTIONS, ids=[str(k) for k, _, _ in BAD_OPTIONS])
def test_bad_options_name_the_argument(digits, kwargs, error, name):
    with pytest.raises(error, match=name):
        fastadv.FAB(digits[0], **kwargs)


def test_more_targets_than_the_model_has_classes_is_an_error(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="n_classes"):
        fastadv.FAB(model, multi_targeted=True, n_classes=11, steps=1).run(x[:4], y[:4])


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 1.0)])
def test_adv_is_in_the_ball_and_the_norm_is_the_perturbation(digits, norm, eps):
    model, x, y = digits
    x, y = x[:16], y[:16]
    result = fastadv.FAB(model, norm=norm, eps=eps, steps=5).run(x, y)
    size = _size(result.adv - x, norm)
    assert bool((size <= eps * (1 + 1e-6)).all()), "adv outside the eps ball"
    assert bool((result.adv >= 0).all() and (result.adv <= 1).all()), "adv outside the bounds"
    with torch.no_grad():
        predicted = model(result.adv).argmax(1)
    assert torch.equal(result.predicted, predicted) and torch.equal(result.success, predicted != y)
    assert 0.3 < result.success_rate < 1.0, "eps chosen so that some but not all samples fall"
    assert result.norm.dtype == torch.float32 and result.norm.shape == y.shape
    ok = result.success
    torch.testing.assert_close(result.norm[ok], size[ok], rtol=1e-6, atol=1e-7)
    assert torch.equal(result.adv[~ok], x[~ok]), "a sample not fooled within eps keeps its clean image"
    assert bool((result.norm[~ok] > eps).all()), "norm above eps (or inf) where not fooled within eps"
    assert bool(torch.isinf(result.norm).any() or (result.norm[~ok] < math.inf).all())
    assert torch.equal(result.success, result.norm <= eps)
    assert torch.equal(fastadv.FAB(model, norm=norm, eps=eps, steps=5)(x, y), result.adv)


def test_per_sample_eps_and_a_misclassified_sample(digits):
    model, x, y = digits
    x, y = x[:8], y[:8].clone()
    y[0] = (y[0] + 1) % 10  # "misclassified": fooled from the start, at norm 0
    eps = torch.linspace(0.0, 0.2, 8)
    result = fastadv.FAB(model, eps=eps, steps=4).run(x, y)
    assert result.norm[0] == 0 and bool(result.success[0]) and torch.equal(result.adv[0], x[0])
    assert bool((_size(result.adv - x, "Linf") <= eps + 1e-7).all())
    assert torch.equal(result.success, result.norm <= eps)
    wider = fastadv.FAB(model, eps=0.2, steps=4).run(x, y)
    assert bool((wider.success | ~result.success).all()), "a larger eps never fools fewer samples"


def test_restarts_are_seeded_and_never_do_worse(digits):
    model, x, y = digits
    x, y = x[:8], y[:8]
    make = lambda **kw: fastadv.FAB(model, eps=0.06, steps=3, **kw)  # noqa: E731
    first = make(n_restarts=2, seed=7).run(x, y)
    again = make(n_restarts=2, seed=7).run(x, y)
    assert torch.equal(first.adv, again.adv) and torch.equal(first.norm, again.norm)
    by_generator = make(n_restarts=2, generator=torch.Generator().manual_seed(7)).run(x, y)
    assert torch.equal(by_generator.adv, first.adv), "the generator replaces the seed's generator"
    single = make(n_restarts=1).run(x, y)
    assert bool((first.success | ~single.success).all()) and bool((first.norm <= single.norm).all())
    assert bool((first.steps_used >= single.steps_used).all())


def test_targeted_reaches_the_targets(digits):
    model, x, y = digits
    x, y = x[:16], y[:16]
    targets = (y + 3) % 10
    result = fastadv.FAB(model, eps=0.3, steps=20, targeted=True).run(x, targets)
    with torch.no_grad():
        predicted = model(result.adv).argmax(1)
    assert torch.equal(result.success, predicted == targets)
    assert result.success_rate >= 0.75
    torch.testing.assert_close(result.norm[result.success], _size(result.adv - x, "Linf")[result.success])


def test_multi_targeted_is_at_least_as_strong_as_its_first_target(digits):
    model, x, y = digits
    x, y = x[:16], y[:16]
    fab_t = fastadv.FAB(model, eps=0.08, steps=6, multi_targeted=True, n_classes=4).run(x, y)
    with torch.no_grad():
        assert torch.equal(fab_t.success, model(fab_t.adv).argmax(1) != y)
    assert bool((fab_t.steps_used % 6 == 0).all()) and int(fab_t.steps_used.max()) <= 6 * 3
    one_target = fastadv.FAB(model, eps=0.08, steps=6, multi_targeted=True, n_classes=2).run(x, y)
    assert bool((fab_t.success | ~one_target.success).all())


def test_verbose_prints_the_originals_log(digits, capsys):
    model, x, y = digits
    fastadv.FAB(model, eps=0.1, steps=2, multi_targeted=True, n_classes=3, verbose=True).run(x[:8], y[:8])
    lines = capsys.readouterr().out.strip().splitlines()
    assert 1 <= len(lines) <= 2
    assert lines[0].startswith("restart 0 - target_class 2 - robust accuracy: ") and "cum. time" in lines[0]


def test_the_model_and_the_callers_tensors_are_left_alone(digits):
    model, x, y = digits
    x, y = x[:8].clone(), y[:8].clone()
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before, x_before, y_before = snapshot(model), x.clone(), y.clone()
    try:
        with torch.inference_mode():
            fastadv.FAB(model, eps=0.1, steps=2).run(x, y)
        assert_unchanged(model, before)
    finally:
        model.eval()
        for p in model.parameters():
            p.grad = None
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


def test_a_non_finite_gradient_never_fools(digits):
    model, x, y = digits
    gamma = GammaModel(model)
    result = fastadv.FAB(gamma, norm="L2", eps=1.0, steps=4).run(x[:16], y[:16])
    assert bool(result.adv.isfinite().all())
    with torch.no_grad():
        assert torch.equal(result.success, gamma(result.adv).argmax(1) != y[:16])
    assert result.non_finite.dtype == torch.bool


def test_options_shared_with_the_root(digits):
    model, x, y = digits
    x, y = x[:8], y[:8]
    plain = fastadv.FAB(model, eps=0.1, steps=3).run(x, y)
    last = fastadv.FAB(model, eps=0.1, steps=3, channels_last=True).run(x, y)
    torch.testing.assert_close(last.norm, plain.norm)
    normalized = fastadv.FAB(lambda t: model(t * 0.5 + 0.25), eps=0.1, steps=3, mean=0.5, std=2.0).run(x, y)
    assert normalized.success.shape == y.shape
    boxed = fastadv.FAB(model, eps=0.3, steps=3, lower=0.1, upper=0.8).run(x.clamp(0.1, 0.8), y)
    assert bool((boxed.adv >= 0.1).all() and (boxed.adv <= 0.8).all())
    assert fastadv.FAB(model, steps=2).run(x[:0], y[:0]).adv.shape[0] == 0


@pytest.mark.parametrize("norm, reference", [("linf", projection_linf), ("l2", projection_l2)])
def test_projection_matches_the_original(norm, reference):
    gen = torch.Generator().manual_seed(0)
    for n in (3, 50, 784):
        t = torch.rand(32, n, generator=gen)
        w = torch.randn(32, n, generator=gen)
        w[::3, : n // 3] = 0  # coordinates that cannot move
        b = (w * t).sum(1) + torch.randn(32, generator=gen) * 2  # some beyond the box's reach
        d = project_onto_hyperplane(t, w, b, torch.zeros(1, n), torch.ones(1, n), norm)
        expected = reference(t.clone(), w.clone(), b.clone())
        torch.testing.assert_close(d, expected, rtol=1e-4, atol=2e-6)
        assert bool(((t + d) >= 0).all() and ((t + d) <= 1).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_finite_box_gives_the_same_projection_bit_for_bit(norm):
    """finite_box=True (FAB's L-inf fast path: the masks for infinite breakpoints skipped) changes
    nothing when t and the box are finite."""
    gen = torch.Generator().manual_seed(1)
    for n in (3, 50, 784):
        t = torch.rand(32, n, generator=gen)
        w = torch.randn(32, n, generator=gen)
        w[::3, : n // 3] = 0
        b = (w * t).sum(1) + torch.randn(32, generator=gen) * 2
        box = (torch.zeros(32, n), torch.ones(32, n))
        plain = project_onto_hyperplane(t, w, b, *box, norm)
        assert torch.equal(project_onto_hyperplane(t, w, b, *box, norm, finite_box=True), plain)


def test_a_step_solves_both_projections_in_one_call(digits, monkeypatch):
    """The iterate's and the image's projections of a step go through one call of 2b rows (the
    per-op cost paid once per step), which gives what two calls of b rows give."""
    import fastadv.attacks.fab as fab

    model, x, y = digits
    x, y = x[:8], y[:8]
    rows = []

    def counted(t, w, b, lo, hi, norm, **kwargs):
        rows.append(t.shape[0])
        d = project_onto_hyperplane(t, w, b, lo, hi, norm, **kwargs)
        n = t.shape[0] // 2
        halves = [project_onto_hyperplane(t[s], w[s], b[s], lo[s], hi[s], norm) for s in (slice(0, n), slice(n, None))]
        assert torch.equal(d, torch.cat(halves)), "one call of 2b rows must equal two of b"
        return d

    monkeypatch.setattr(fab, "project_onto_hyperplane", counted)
    fastadv.FAB(model, eps=0.1, steps=3).run(x, y)
    assert rows == [2 * 8] * 3


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["standard", "fgsm-rs"])
@pytest.mark.parametrize("multi_targeted", [False, True], ids=["untargeted", "FAB-T"])
def test_agrees_with_torchattacks_on_the_digits_cnn(digits_model, trained, multi_targeted):
    """n_restarts=1: both start at the image itself, so the runs are deterministic (torchattacks'
    default); on the standard and the FGSM-RS-trained digits CNN the robust accuracies at eps 0.1
    (within 2 percentage points) and the median norms found (within 2%) must agree. Measured on
    the first 64 test digits, FAB and FAB-T alike: standard 12.5% and 12.5%, FGSM-RS 76.6% and 76.6%."""
    from support.models import fgsm_rs_digits_model

    model, x, y = digits_model if trained == "standard" else fgsm_rs_digits_model()
    x, y = x[:64], y[:64]
    options = dict(norm="Linf", eps=0.1, steps=10, n_restarts=1, multi_targeted=multi_targeted, n_classes=10)
    ours = fastadv.FAB(model, **options).run(x, y)
    theirs = TorchattacksFAB(model, **options)(x, y)
    with torch.no_grad():
        their_fooled = model(theirs).argmax(1) != y
        theirs = theirs.detach()
    assert abs(ours.success.float().mean() - their_fooled.float().mean()) <= 0.02
    their_norm = _size(theirs - x, "Linf")[their_fooled]
    assert abs(float(ours.norm[ours.success].median()) - float(their_norm.median())) <= 0.02 * float(
        their_norm.median()
    )
