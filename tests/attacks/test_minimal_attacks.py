"""CW, DeepFool and JSMA: against plain implementations written here, their strength on the
digits CNN against PGD-L2, their budgets, model safety and bad input."""

import pytest
import torch
from support.bad_calls import BAD_CALLS, check_bad_call
from support.models import CountingModel, digits_model

import fastadv

pytestmark = pytest.mark.slow  # CW, DeepFool and JSMA against per-sample implementations


@pytest.fixture(scope="module")
def correct(digits_model):
    """The digits CNN and 128 test samples it classifies correctly."""
    model, x, y = digits_model
    with torch.no_grad():
        right = model(x).argmax(1) == y
    return model, x[right][:128], y[right][:128]


def _l2(a, b):
    return (a.float() - b.float()).flatten(1).norm(dim=1)


def _margin(logits, labels):
    """label logit minus the best other logit."""
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf")).amax(1)
    return logits.gather(1, labels.unsqueeze(1)).squeeze(1) - others


# --- plain implementations, one sample or one batch at a time, written from the papers ----------


def plain_cw(model, x, y, *, c, kappa, steps, lr):
    """One round of CW-L2 with torch.optim.Adam, no early abort: the smallest fooling iterate."""
    w = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr)
    best_l2 = torch.full((len(y),), float("inf"))
    best = x.clone()
    for _ in range(steps):
        adv = (torch.tanh(w) + 1) / 2
        margin = _margin(model(adv), y)
        cost = ((adv - x) ** 2).flatten(1).sum(1) + c * margin.clamp(min=-kappa)
        w.grad = torch.autograd.grad(cost.sum(), w)[0]
        optimizer.step()
        with torch.no_grad():
            l2 = _l2(adv, x)
            better = (margin < -kappa) & (l2 < best_l2)
            best_l2[better], best[better] = l2[better], adv[better].detach()
    return best, torch.isfinite(best_l2)


def plain_deepfool(model, x0, label, steps=50, overshoot=0.02):
    """The paper's Algorithm 2 for one image, every class, a Python loop over classes."""
    r_total = torch.zeros_like(x0)
    point = x0.clone()
    for _ in range(steps):
        point = point.detach().requires_grad_(True)
        z = model(point.unsqueeze(0))[0]
        if z.argmax() != label:
            break
        grads = [torch.autograd.grad(z[k], point, retain_graph=True)[0] for k in range(len(z))]
        nearest, r = float("inf"), None
        for k in range(len(z)):
            if k != label:
                w, f = grads[k] - grads[label], (z[k] - z[label]).detach()
                if f.abs() / w.norm() < nearest:
                    nearest, r = f.abs() / w.norm(), (f.abs() + 1e-4) * w / w.norm() ** 2
        r_total = r_total + r
        point = (x0 + (1 + overshoot) * r_total).clamp(0, 1)
    return point.detach()


def plain_jsma(model, x0, target, theta=1.0, gamma=0.1):
    """Targeted JSMA for one image: increase the best pair until the target or gamma is reached."""
    x = x0.flatten().clone()
    n = x.numel()
    domain = x < 1
    for _ in range(int(n * gamma) // 2):
        point = x.view_as(x0).unsqueeze(0).requires_grad_(True)
        z = model(point)[0]
        if z.argmax() == target:
            break
        alpha = torch.autograd.grad(z[target], point, retain_graph=True)[0].flatten()
        beta = torch.autograd.grad(z.sum() - z[target], point)[0].flatten()
        a, b = alpha[:, None] + alpha[None, :], beta[:, None] + beta[None, :]
        ok = (a > 0) & (b < 0) & domain[:, None] & domain[None, :] & ~torch.eye(n, dtype=torch.bool)
        if not ok.any():
            break
        best = torch.where(ok, -a * b, torch.tensor(float("-inf"))).flatten().argmax()
        for i in (int(best) // n, int(best) % n):
            x[i] = (x[i] + theta).clamp(0, 1)
            domain[i] = False
    return x.view_as(x0)


# --- agreement with the plain implementations ---------------------------------------------------


def test_cw_matches_plain_cw(correct):
    model, x, y = correct
    x, y = x[:32], y[:32]
    expected, fooled = plain_cw(model, x, y, c=2.0, kappa=0.5, steps=20, lr=0.02)
    result = fastadv.CW(model, c=2.0, kappa=0.5, steps=20, lr=0.02, abort_early=False).run(x, y)
    assert torch.equal(result.success, fooled) and fooled.float().mean() > 0.5
    torch.testing.assert_close(result.adv, expected, atol=1e-6, rtol=0)


def test_deepfool_matches_the_per_sample_algorithm(correct):
    model, x, y = correct
    result = fastadv.DeepFool(model).run(x[:24], y[:24])
    expected = torch.stack([plain_deepfool(model, x[i], y[i]) for i in range(24)])
    torch.testing.assert_close(result.adv, expected, atol=1e-5, rtol=0)


def test_jsma_matches_the_per_sample_algorithm(correct):
    model, x, y = correct
    x, targets = x[:16], (y[:16] + 3) % 10
    result = fastadv.JSMA(model, theta=1.0, gamma=0.1, targeted=True).run(x, targets)
    expected = torch.stack([plain_jsma(model, x[i], targets[i]) for i in range(16)])
    same = (result.adv == expected).flatten(1).all(1)
    assert same.float().mean() >= 0.9, f"{int((~same).sum())} of 16 samples differ"


# --- strength and budgets -----------------------------------------------------------------------


@pytest.mark.slow
def test_cw_and_deepfool_need_less_l2_than_pgd_l2(correct):
    """Both fool (nearly) every sample, with perturbations well below the L2 budget that PGD-L2
    needs to reach the same success: a minimal-perturbation attack finds each sample's own
    distance instead of one budget for all."""
    model, x, y = correct
    budgets = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
    pgd_success = {
        eps: fastadv.PGDL2(model, eps=eps, alpha=eps / 5, steps=20, generator=torch.Generator().manual_seed(0))
        .run(x, y)
        .success_rate
        for eps in budgets
    }
    assert pgd_success[0.5] < 0.5 < pgd_success[3.0], pgd_success
    for attack in (fastadv.CW(model, steps=100, lr=0.01), fastadv.DeepFool(model)):
        name = type(attack).__name__
        result = attack.run(x, y)
        assert result.success_rate >= 0.98, name
        needed = next((eps for eps in budgets if pgd_success[eps] >= result.success_rate), float("inf"))
        l2 = _l2(result.adv, x)[result.success]
        assert l2.mean() < 0.8 * needed and l2.median() < 0.8 * needed, (
            f"{name}: mean L2 {l2.mean():.3f}, median {l2.median():.3f}; PGD-L2 needs {needed} for "
            f"{result.success_rate:.2f} success ({pgd_success})"
        )
        with torch.no_grad():
            assert torch.equal(model(result.adv).argmax(1) != y, result.success)
        assert result.adv.min() >= 0 and result.adv.max() <= 1


def test_cw_binary_search_never_increases_the_distance(correct):
    model, x, y = correct
    x, y = x[:48], y[:48]
    one = fastadv.CW(model, c=0.1, steps=30, lr=0.02).run(x, y)
    searched = fastadv.CW(model, c=0.1, steps=30, lr=0.02, binary_search_steps=4).run(x, y)
    # the first round is the same; later rounds only replace a result by a closer one
    assert (searched.success >= one.success).all() and searched.success.sum() > one.success.sum()
    both = one.success
    assert (_l2(searched.adv, x)[both] <= _l2(one.adv, x)[both] + 1e-6).all()
    assert torch.equal(searched.adv[~searched.success], x[~searched.success])


def test_cw_kappa_and_targeted(correct):
    model, x, y = correct
    x, y = x[:32], y[:32]
    result = fastadv.CW(model, kappa=2.0, c=5.0, steps=60, lr=0.05).run(x, y)
    with torch.no_grad():
        margins = _margin(model(result.adv), y)
    assert result.success.float().mean() > 0.9 and (margins[result.success] < -2.0 + 1e-4).all()
    targets = (y + 1) % 10
    targeted = fastadv.CW(model, c=5.0, steps=60, lr=0.05, targeted=True).run(x, targets)
    with torch.no_grad():
        reached = model(targeted.adv).argmax(1) == targets
    assert targeted.success.float().mean() > 0.9 and torch.equal(reached, targeted.success)


def test_deepfool_stops_fooled_samples_and_respects_bounds(correct):
    model, x, y = correct
    counted = CountingModel(model)
    result = fastadv.DeepFool(counted, steps=50, overshoot=0.02, candidates=4).run(x, y)
    assert result.success.all()
    # each sample is forwarded once per step it took and once more when it is found fooled
    assert counted.samples == int(result.steps_used.sum()) + len(y)
    assert result.steps_used.max() < 50 and (result.steps_used >= 1).all()
    lower, upper = torch.full((1, 1, 1, 1), 0.1), torch.full((1, 1, 1, 1), 0.9)
    inside = x.clamp(0.1, 0.9)
    bounded = fastadv.DeepFool(model, lower=lower, upper=upper).run(inside, y)
    assert bounded.adv.min() >= 0.1 and bounded.adv.max() <= 0.9


@pytest.mark.slow
def test_jsma_changes_at_most_gamma_and_reaches_targets(correct):
    model, x, y = correct
    targets = (y + torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(0))) % 10
    for gamma in (0.1, 0.2):
        result = fastadv.JSMA(model, theta=1.0, gamma=gamma, targeted=True).run(x, targets)
        changed = (result.adv != x).flatten(1).sum(1)
        assert changed.max() <= gamma * x[0].numel()
        with torch.no_grad():
            assert torch.equal(model(result.adv).argmax(1) == targets, result.success)
        if gamma == 0.2:
            assert result.success.float().mean() >= 0.7, f"reached {result.success_rate:.2f} of the targets"
    decreasing = fastadv.JSMA(model, theta=-1.0, gamma=0.2).run(x, y)
    assert (decreasing.adv <= x).all() and decreasing.success.any()


def test_jsma_untargeted_uses_the_generator(correct):
    model, x, y = correct
    runs = [fastadv.JSMA(model, generator=torch.Generator().manual_seed(s)).run(x[:32], y[:32]) for s in (0, 0, 1)]
    assert torch.equal(runs[0].adv, runs[1].adv) and not torch.equal(runs[0].adv, runs[2].adv)
    assert torch.equal(runs[0].success, runs[0].predicted != y[:32])


def test_mean_std_equal_normalization_inside_the_model(correct):
    model, x, y = correct
    mean, std = 0.3, 0.5
    normalized = torch.nn.Sequential(_Unnormalize(mean, std), model)
    for make in (lambda m, **o: fastadv.CW(m, steps=10, **o), lambda m, **o: fastadv.DeepFool(m, **o)):
        inside = make(model)(x[:16], y[:16])
        outside = make(normalized, mean=[mean], std=[std])(x[:16], y[:16])
        torch.testing.assert_close(outside, inside, atol=1e-5, rtol=0)


class _Unnormalize(torch.nn.Module):
    """Undoes (x - mean) / std, so that model(_Unnormalize(...)) sees raw pixels again."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return x * self.std + self.mean


# --- bad input (model safety: test_attack_safety.py, for every attack) ---------------------------

ATTACKS = {
    "cw": lambda m, **kw: fastadv.CW(m, steps=3, **kw),
    "deepfool": lambda m, **kw: fastadv.DeepFool(m, steps=3, **kw),
    "jsma": lambda m, **kw: fastadv.JSMA(m, gamma=0.05, **kw),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_empty_batch_half_precision_and_no_grad(name, correct):
    model, x, y = correct
    empty = ATTACKS[name](model).run(x[:0], y[:0])
    assert empty.adv.shape == (0, 1, 16, 16) and empty.success.shape == (0,)
    with torch.no_grad():
        adv = ATTACKS[name](model.to(torch.bfloat16))(x[:8].bfloat16(), y[:8])
    model.float()
    assert adv.dtype == torch.bfloat16 and adv.shape == (8, 1, 16, 16)


GENERIC_BAD_CALLS = [c for c in BAD_CALLS if c[0].split()[0] in ("labels", "images", "model")]


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("case", GENERIC_BAD_CALLS, ids=[c[0] for c in GENERIC_BAD_CALLS])
def test_bad_calls(name, case):
    check_bad_call(ATTACKS[name], case)


BAD_OPTIONS = [
    (fastadv.CW, {"c": 0}, ValueError, "c"),
    (fastadv.CW, {"c": "1"}, TypeError, "c"),
    (fastadv.CW, {"kappa": -1}, ValueError, "kappa"),
    (fastadv.CW, {"lr": 0.0}, ValueError, "lr"),
    (fastadv.CW, {"steps": 0}, ValueError, "steps"),
    (fastadv.CW, {"binary_search_steps": 0}, ValueError, "binary_search_steps"),
    (fastadv.CW, {"abort_early": 1}, TypeError, "abort_early"),
    (fastadv.CW, {"early_stop": True}, ValueError, "early_stop"),
    (fastadv.CW, {"lower": 1.0, "upper": 0.0}, ValueError, "lower"),
    (fastadv.DeepFool, {"overshoot": -0.1}, ValueError, "overshoot"),
    (fastadv.DeepFool, {"steps": 1.5}, TypeError, "steps"),
    (fastadv.DeepFool, {"candidates": 1}, ValueError, "candidates"),
    (fastadv.DeepFool, {"targeted": True}, ValueError, "targeted"),
    (fastadv.DeepFool, {"early_stop": False}, ValueError, "early_stop"),
    (fastadv.DeepFool, {"amp": "fp64"}, ValueError, "amp"),
    (fastadv.JSMA, {"theta": 0}, ValueError, "theta"),
    (fastadv.JSMA, {"theta": float("nan")}, ValueError, "theta"),
    (fastadv.JSMA, {"gamma": 0}, ValueError, "gamma"),
    (fastadv.JSMA, {"gamma": 1.5}, ValueError, "gamma"),
    (fastadv.JSMA, {"early_stop": True}, ValueError, "early_stop"),
    (fastadv.JSMA, {"model_mode": "test"}, ValueError, "model_mode"),
]


@pytest.mark.parametrize("cls, kwargs, error, name", BAD_OPTIONS, ids=[f"{c[0].__name__}-{c[3]}" for c in BAD_OPTIONS])
def test_bad_options(cls, kwargs, error, name):
    with pytest.raises(error, match=name):
        cls(digits_model()[0], **kwargs)


def test_repr_names_the_settings(correct):
    model = correct[0]
    assert "binary_search_steps=3" in repr(fastadv.CW(model, binary_search_steps=3))
    assert "overshoot=0.05" in repr(fastadv.DeepFool(model, overshoot=0.05))
    assert "gamma=0.2" in repr(fastadv.JSMA(model, gamma=0.2))
