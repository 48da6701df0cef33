"""The attacks against a plain PyTorch loop written in the test (support.plain_attacks.plain_attack):
identical adversarial images in float32 for the sign steps, to rtol 1e-5 for L2. Each is checked
twice: ``attack(x, y)`` returns the final iterate, ``attack.run(x, y).adv`` keeps adversarial
iterates (``keep=True`` in the plain loop)."""

import pytest
import torch
from support.backends import require_backend
from support.compare import assert_exact
from support.plain_attacks import plain_attack, uniform_start

import fastadv

EPS, ALPHA = 0.1, 0.0125


@pytest.fixture(scope="module")
def digits(digits_model):
    model, images, labels = digits_model
    return model, images[:96], labels[:96]


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_equals_plain_loop(digits, targeted, loss):
    model, x, y = digits
    y = (y + 3) % 10 if targeted else y
    attack = fastadv.PGD(model, eps=EPS, alpha=ALPHA, steps=10, random_start=False, targeted=targeted, loss=loss)
    for keep, actual in ((False, attack(x, y)), (True, attack.run(x, y).adv)):
        expected = plain_attack(model, x, y, x, eps=EPS, alpha=ALPHA, steps=10, targeted=targeted, loss=loss, keep=keep)
        assert_exact(actual, expected, f"PGD targeted={targeted} loss={loss} keep={keep}")


def test_pgd_random_start_equals_plain_loop_from_the_same_start(digits):
    model, x, y = digits
    gen = torch.Generator()
    attack = fastadv.PGD(model, eps=EPS, alpha=ALPHA, steps=10, generator=gen)
    for keep in (False, True):
        expected = plain_attack(model, x, y, uniform_start(x, EPS, seed=7), eps=EPS, alpha=ALPHA, steps=10, keep=keep)
        gen.manual_seed(7)
        actual = attack.run(x, y).adv if keep else attack(x, y)
        assert_exact(actual, expected, f"PGD with a random start, keep={keep}")


def test_fgsm_is_one_pgd_step(digits):
    model, x, y = digits
    fgsm = fastadv.FGSM(model, eps=EPS)(x, y)
    pgd1 = fastadv.PGD(model, eps=EPS, alpha=EPS, steps=1, random_start=False)(x, y)
    assert_exact(fgsm, pgd1, "FGSM vs PGD-1")
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)[0]
    assert_exact(fgsm, (x + EPS * grad.sign()).clamp(0, 1), "FGSM vs its formula")
    assert_exact(fastadv.fgsm(model, x, y, eps=EPS), fgsm, "fastadv.fgsm")


@pytest.mark.parametrize("targeted", [False, True])
def test_mifgsm_equals_plain_momentum_loop(digits, targeted):
    model, x, y = digits
    y = (y + 1) % 10 if targeted else y
    attack = fastadv.MIFGSM(model, eps=EPS, alpha=ALPHA, steps=10, decay=1.0, targeted=targeted)
    for keep, actual in ((False, attack(x, y)), (True, attack.run(x, y).adv)):
        expected = plain_attack(model, x, y, x, eps=EPS, alpha=ALPHA, steps=10, decay=1.0, targeted=targeted, keep=keep)
        assert_exact(actual, expected, f"MIFGSM keep={keep}")


@pytest.mark.parametrize("steps, atol", [(1, 1e-6), (5, 1e-3)])
def test_pgdl2_matches_plain_loop(digits, steps, atol):
    """The L2 norms are summed in another order than torch's (rtol 1e-5 by the op contract);
    over several steps ReLU and max-pool switches amplify those last-bit differences."""
    model, x, y = digits
    attack = fastadv.PGDL2(model, eps=1.0, alpha=0.2, steps=steps, random_start=False)
    for keep, actual in ((False, attack(x, y)), (True, attack.run(x, y).adv)):
        expected = plain_attack(model, x, y, x, eps=1.0, alpha=0.2, steps=steps, norm="l2", keep=keep)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)
        assert (actual - x).flatten(1).norm(dim=1).max() <= 1.0 * (1 + 1e-5)


def test_run_keeps_an_adversarial_iterate_the_final_step_lost(digits):
    """With steps twice the radius PGD oscillates; run() must not return such samples unfooled."""
    model, x, y = digits
    attack = fastadv.PGD(model, eps=0.08, alpha=0.16, steps=6, random_start=False)
    final, kept = attack(x, y), attack.run(x, y)
    with torch.no_grad():
        final_fooled = model(final).argmax(1) != y
        kept_fooled = model(kept.adv).argmax(1) != y
    assert torch.equal(kept_fooled, kept.success)
    assert (kept_fooled >= final_fooled).all()
    assert kept_fooled.sum() > final_fooled.sum(), "this setting should make some samples oscillate"


def test_agrees_with_torchattacks_when_installed(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    pairs = [
        (torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=10, random_start=False),
         fastadv.PGD(model, eps=EPS, alpha=ALPHA, steps=10, random_start=False)),
        (torchattacks.FGSM(model, eps=EPS), fastadv.FGSM(model, eps=EPS)),
        (torchattacks.MIFGSM(model, eps=EPS, alpha=ALPHA, steps=10, decay=1.0),
         fastadv.MIFGSM(model, eps=EPS, alpha=ALPHA, steps=10, decay=1.0)),
    ]  # fmt: skip
    for theirs, ours in pairs:
        # torchattacks projects as x + clamp(adv - x, -eps, eps): one more rounding than min/max
        torch.testing.assert_close(ours(x, y), theirs(x, y), rtol=0, atol=1e-6)


def test_functional_pgd_defaults(digits):
    model, x, y = digits
    gen = torch.Generator().manual_seed(3)
    expected = fastadv.PGD(model, eps=EPS, alpha=EPS / 4, steps=10, generator=gen)(x, y)
    gen.manual_seed(3)
    assert_exact(fastadv.pgd(model, x, y, eps=EPS, generator=gen), expected, "fastadv.pgd linf")
    gen.manual_seed(3)
    expected = fastadv.PGDL2(model, eps=1.0, alpha=0.25, steps=10, generator=gen)(x, y)
    gen.manual_seed(3)
    assert_exact(fastadv.pgd(model, x, y, eps=1.0, norm="l2", generator=gen), expected, "fastadv.pgd l2")


@pytest.mark.parametrize("cls", [fastadv.PGD, fastadv.PGDL2])
def test_same_generator_seed_same_output(digits, cls):
    model, x, y = digits

    def run(seed):
        return cls(model, steps=3, generator=torch.Generator().manual_seed(seed))(x, y)

    assert_exact(run(5), run(5), "same seed")
    assert not torch.equal(run(5), run(6)), "a different seed should give another random start"


@pytest.mark.parametrize("backend", ["torch", "triton", "cpu"])
def test_backends_give_identical_linf_attacks(digits, backend):
    require_backend(backend, "cpu")
    model, x, y = digits
    x, y = x[:24], y[:24]

    def run(name):
        gen = torch.Generator().manual_seed(11)
        return fastadv.PGD(model, eps=EPS, alpha=ALPHA, steps=4, generator=gen, backend=name)(x, y)

    assert_exact(run(backend), run("torch"), f"PGD on {backend}")


def test_mean_std_equals_normalization_inside_the_model(digits):
    model, x, y = digits
    mean, std = torch.tensor([0.3]), torch.tensor([0.4])
    normalized_inside = torch.nn.Sequential(_Normalize(mean, std), model)
    inside = fastadv.PGD(normalized_inside, eps=EPS, alpha=ALPHA, steps=5, random_start=False)(x, y)
    outside = fastadv.PGD(model, eps=EPS, alpha=ALPHA, steps=5, random_start=False, mean=[0.3], std=[0.4])(x, y)
    assert_exact(outside, inside, "mean/std")


class _Normalize(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def forward(self, x):
        return (x - self.mean) / self.std


@pytest.mark.parametrize("options", [{"early_stop": True}, {"restarts": 2}])
def test_call_returns_run_adv_when_it_tracks_success(digits, options):
    model, x, y = digits
    gen = torch.Generator()
    attack = fastadv.PGD(model, eps=EPS, alpha=ALPHA, steps=5, generator=gen, **options)
    gen.manual_seed(2)
    called = attack(x, y)
    gen.manual_seed(2)
    assert_exact(called, attack.run(x, y).adv, f"call vs run with {options}")
