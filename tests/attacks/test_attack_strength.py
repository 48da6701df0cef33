"""Attack strength on a real model (a CNN trained on scikit-learn's digits in the test session),
early stopping, restarts, mixed precision and the layout and parameter options."""

import pytest
import torch
from support.models import CountingModel, accuracy, digits_model

import fastadv

pytestmark = pytest.mark.slow  # strength tests run full attacks on the digits model

EPS = 0.1


@pytest.fixture(scope="module")
def digits(digits_model):
    model, images, labels = digits_model
    return model, images, labels


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_the_model_is_a_real_classifier(digits):
    model, x, y = digits
    assert accuracy(model, x, y) >= 0.97


def test_pgd_is_stronger_than_fgsm(digits):
    model, x, y = digits
    fgsm_acc = accuracy(model, fastadv.FGSM(model, eps=EPS)(x, y), y)
    pgd_acc = accuracy(model, fastadv.PGD(model, eps=EPS, alpha=EPS / 8, steps=20, generator=_gen())(x, y), y)
    assert pgd_acc < fgsm_acc < accuracy(model, x, y)
    assert pgd_acc < 0.30, f"PGD-20 accuracy {pgd_acc:.3f}"


def test_targeted_pgd_reaches_its_targets(digits):
    model, x, y = digits
    targets = (y + 1) % 10
    # A targeted attack needs a bigger budget than an untargeted one on this model.
    result = fastadv.PGD(model, eps=0.2, alpha=0.01, steps=40, targeted=True, generator=_gen()).run(x, targets)
    with torch.no_grad():
        predicted = model(result.adv).argmax(1)
    assert torch.equal(result.success, predicted == targets)
    assert result.success.float().mean() >= 0.8, f"targets reached on {result.success.float().mean():.3f}"


@pytest.mark.parametrize(
    "attack",
    [
        lambda m: fastadv.PGDL2(m, eps=1.5, alpha=0.15, steps=20, generator=_gen()),
        lambda m: fastadv.MIFGSM(m, eps=EPS, alpha=EPS / 8, steps=20),
        lambda m: fastadv.PGD(m, eps=EPS, alpha=EPS / 8, steps=20, loss="margin", generator=_gen()),
    ],
    ids=["pgdl2", "mifgsm", "pgd-margin"],
)
def test_other_attacks_degrade_accuracy(digits, attack):
    model, x, y = digits
    result = attack(model).run(x, y)
    robust = accuracy(model, result.adv, y)
    assert robust < 0.35, f"accuracy under attack {robust:.3f}"
    assert abs((1 - result.success.float().mean()) - robust) < 1e-6, "success disagrees with the model"


def test_result_fields_agree_with_the_model(digits):
    model, x, y = digits
    result = fastadv.PGD(model, eps=EPS, steps=5, loss="margin", generator=_gen()).run(x, y)
    with torch.no_grad():
        logits = model(result.adv)
    assert torch.equal(result.success, logits.argmax(1) != y)
    assert torch.equal(result.predicted, logits.argmax(1))
    margin = logits.clone().scatter_(1, y[:, None], float("-inf")).amax(1) - logits.gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(result.loss, margin, rtol=1e-5, atol=1e-5)
    assert result.steps_used.tolist() == [5] * len(y)
    assert 0 < result.success_rate < 1


@pytest.mark.parametrize("cls", [fastadv.PGD, fastadv.PGDL2, fastadv.MIFGSM])
def test_early_stop_same_successes_fewer_evaluations(digits, cls):
    model, x, y = digits
    eps = 1.5 if cls is fastadv.PGDL2 else EPS
    results, samples = {}, {}
    for early in (False, True):
        counted = CountingModel(model)
        options = {} if cls is fastadv.MIFGSM else {"generator": _gen(4)}
        results[early] = cls(counted, eps=eps, steps=20, early_stop=early, **options).run(x, y)
        samples[early] = counted.samples
    assert torch.equal(results[True].success, results[False].success)
    assert samples[True] < 0.8 * samples[False], samples
    assert int(results[True].steps_used.sum()) < int(results[False].steps_used.sum())
    # frozen samples are returned at the first iterate that fooled the model
    fooled = results[True].success
    with torch.no_grad():
        assert (model(results[True].adv[fooled]).argmax(1) != y[fooled]).all()


def test_restarts_never_do_worse_per_sample(digits):
    model, x, y = digits
    one = fastadv.PGD(model, eps=0.06, alpha=0.01, steps=5, generator=_gen(9)).run(x, y)
    counted = CountingModel(model)
    three = fastadv.PGD(counted, eps=0.06, alpha=0.01, steps=5, restarts=3, generator=_gen(9)).run(x, y)
    assert (three.success >= one.success).all()
    both_fail = ~one.success & ~three.success
    assert (three.loss[both_fail] >= one.loss[both_fail]).all()
    assert three.success.sum() > one.success.sum(), "restarts should find some more adversarial examples"
    # restarts run only on the samples not yet fooled: 6 forwards per sample and run
    survivors_after_first = int((~one.success).sum())
    assert counted.samples <= 6 * (len(y) + 2 * survivors_after_first)
    assert three.steps_used.max() == 15 and three.steps_used.min() == 5


def test_amp_bfloat16_on_cpu(digits):
    model, x, y = digits
    dtypes = set()
    hook = model[0].register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    try:
        fp32 = fastadv.PGD(model, eps=EPS, alpha=EPS / 8, steps=20, generator=_gen()).run(x, y)
        dtypes.clear()
        bf16 = fastadv.PGD(model, eps=EPS, alpha=EPS / 8, steps=20, amp=torch.bfloat16, generator=_gen()).run(x, y)
    finally:
        hook.remove()
    assert dtypes == {torch.bfloat16}, "the model did not run under bfloat16 autocast"
    assert bf16.adv.dtype == torch.float32 and bf16.loss.dtype == torch.float32
    assert abs(bf16.success_rate - fp32.success_rate) <= 0.05, (bf16.success_rate, fp32.success_rate)


def test_channels_last(digits):
    model, x, y = digits
    contiguous = fastadv.PGD(model, eps=EPS, steps=10, generator=_gen()).run(x, y)
    last = fastadv.PGD(model, eps=EPS, steps=10, channels_last=True, early_stop=True, generator=_gen()).run(x, y)
    assert last.adv.is_contiguous(memory_format=torch.channels_last)
    assert (last.adv - x).abs().max() <= EPS + 1e-6
    # the convolutions sum in another order in channels_last: a few gradient signs may flip
    assert abs(last.success_rate - contiguous.success_rate) <= 0.03


@pytest.mark.parametrize("early_stop", [False, True])
def test_per_sample_eps_and_per_channel_bounds(digits, early_stop):
    model, x, y = digits
    eps = torch.linspace(0.0, 0.15, len(y))
    lower, upper = torch.full((1, 1, 1, 1), 0.0), torch.full((1, 1, 1, 1), 1.0)
    result = fastadv.PGD(
        model, eps=eps, alpha=eps / 4, steps=10, lower=lower, upper=upper, early_stop=early_stop, generator=_gen()
    ).run(x, y)
    distance = (result.adv - x).flatten(1).abs().amax(1)
    assert (distance <= eps + 1e-6).all()
    assert distance[0] == 0
    # a bigger budget fools more: compare the first and last thirds
    third = len(y) // 3
    assert result.success[-third:].float().mean() > result.success[:third].float().mean()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_images(digits, dtype):
    model, x, y = digits
    half_model = digits_model()[0].to(dtype)
    xh = x.to(dtype)
    result = fastadv.PGD(half_model, eps=EPS, alpha=EPS / 8, steps=10, generator=_gen()).run(xh, y)
    assert result.adv.dtype == dtype
    assert 0 <= result.adv.min() and result.adv.max() <= 1
    assert result.success_rate > 0.5


@pytest.mark.parametrize("eps", [0.1, 8 / 255], ids=["0.1", "8/255"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_images_stay_within_eps(digits, dtype, eps):
    """Rounding to float16/bfloat16 never leaves the ball (nearest rounding made eps 0.1 into
    0.1016 and 8/255 into 0.03149 for every sample): |adv - x| <= eps exactly, for every sample."""
    model, x, y = digits
    half_model = digits_model()[0].to(dtype)
    xh = x[:32].to(dtype)
    for attack in (
        fastadv.PGD(half_model, eps=eps, alpha=eps / 4, steps=5, early_stop=False, generator=_gen()),
        fastadv.APGD(half_model, eps=eps, steps=5, generator=_gen()),
    ):
        adv = attack(xh, y[:32])
        distance = (adv.double() - xh.double()).flatten(1).abs().amax(1)  # exact differences
        assert (distance <= eps).all(), f"{type(attack).__name__}: {distance.max().item()} > {eps}"
        assert (distance > eps * 0.99).float().mean() > 0.5, "the attack did not reach the ball's edge"
