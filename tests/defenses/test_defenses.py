"""fastadv.defenses: the transforms (values, gradients, the adaptive switch), Defended, Ensemble,
the distillation recipe, EOT, model safety of every wrapper, bad arguments, and the adaptive
evaluation's report on a few samples. The measured acceptance numbers (full test split, trained
models) are in test_defenses_acceptance.py."""

import io
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.model_state import assert_unchanged, snapshot
from support.models import CountingModel
from torch import nn

import fastadv
from fastadv.attacks.catalog import adaptive_attacks
from fastadv.defenses import (
    JPEG,
    BitDepth,
    Defended,
    Ensemble,
    MedianFilter,
    RandomResizePad,
    adaptive_active,
    adaptive_gradients,
    compare,
    format_comparison,
    parse_defense,
)
from fastadv.evaluation import evaluate
from fastadv.recipes import Recipe, adversarial_batch, training_loss


def _images(b=4, c=1, h=16, w=16, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _input_grad(module, x):
    """The input gradient of the output weighted by 0, 1, 2, ... per element of a sample."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    (grad,) = torch.autograd.grad((out * torch.arange(out[0].numel()).view_as(out[0])).sum(), x)
    return grad


# ---- the transforms ----


def test_bit_depth_rounds_to_its_levels():
    x = _images()
    for bits in (1, 3, 5, 8):
        out = BitDepth(bits)(x)
        levels = 2**bits - 1
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.equal(out, torch.round(x * levels) / levels)
        assert (out * levels - torch.round(out * levels)).abs().max() < 1e-5
        assert (out - x).abs().max() <= 0.5 / levels + 1e-6


def test_jpeg_is_a_real_jpeg_round_trip():
    from PIL import Image

    x = _images(3, 1, 16, 16)
    out = JPEG(75)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out * 255, torch.round(out * 255))  # uint8 levels
    # the same as Pillow's JPEG codec (libjpeg) within a grey level on average
    for i in range(3):
        pixels = (x[i, 0] * 255).round().to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=75)
        pil = torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue())))).float() / 255
        assert (pil - out[i, 0]).abs().mean() < 1.5 / 255
    # lower quality: further from the input; batched equals one image at a time
    err = {q: float((JPEG(q)(x) - x).abs().mean()) for q in (10, 50, 95)}
    assert err[10] > err[50] > err[95] > 0
    assert torch.equal(torch.cat([JPEG(75)(x[i : i + 1]) for i in range(3)]), out)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_jpeg_takes_any_channel_count_and_8x8_images(channels):
    x = _images(2, channels, 8, 8)
    out = JPEG(50)(x)
    assert out.shape == x.shape and 0 < float((out - x).abs().mean()) < 0.2


def test_median_filter_matches_scipy_with_reflect_padding():
    from scipy.ndimage import median_filter

    x = _images(2, 3, 9, 11)
    for size in (1, 3, 5):
        out = MedianFilter(size)(x)
        # torch's "reflect" (d c b | a b c d) is scipy's "mirror"
        expected = median_filter(x.numpy(), size=(1, 1, size, size), mode="mirror")
        torch.testing.assert_close(out, torch.from_numpy(expected), rtol=0, atol=0)


def test_random_resize_pad_draws_reproducibly_and_pads_with_zeros():
    x = torch.ones(8, 1, 16, 16)

    def draw(seed):
        t = RandomResizePad(0.5, generator=torch.Generator().manual_seed(seed))
        return t(x), t(x)

    first, second = draw(0)
    again, _ = draw(0)
    assert torch.equal(first, again), "the same seed must give the same draws"
    assert not torch.equal(first, second), "each call draws anew"
    assert first.shape == x.shape
    # each image shrunk to at most its size and placed on zeros: a border of zeros, ones inside
    ones = (first > 0.999).flatten(1).sum(1)
    assert bool((ones >= 7 * 7).all()) and bool((ones <= 16 * 16).all())
    assert bool(((first == 0).flatten(1).sum(1) > 0).any())
    assert len({int(n) for n in ones}) > 1, "each image of the batch draws its own size"
    identity = RandomResizePad(1.0)(_images())
    torch.testing.assert_close(identity, _images())


@pytest.mark.parametrize(
    "make, error, name",
    [
        (lambda: BitDepth(0), ValueError, "bits"),
        (lambda: BitDepth(9), ValueError, "bits"),
        (lambda: BitDepth(2.5), TypeError, "bits"),
        (lambda: JPEG(0), ValueError, "quality"),
        (lambda: JPEG(101), ValueError, "quality"),
        (lambda: JPEG("75"), TypeError, "quality"),
        (lambda: MedianFilter(2), ValueError, "size must be odd"),
        (lambda: MedianFilter(4), ValueError, "size must be odd"),
        (lambda: MedianFilter(0), ValueError, "size"),
        (lambda: RandomResizePad(0), ValueError, "min_scale"),
        (lambda: RandomResizePad(1.5), ValueError, "min_scale"),
        (lambda: RandomResizePad(0.8, generator=3), TypeError, "generator"),
        (lambda: Ensemble([]), ValueError, "models: an ensemble needs at least one model"),
        (lambda: Ensemble(nn.Linear(2, 2)), TypeError, "models"),
        (lambda: Ensemble([nn.Linear(2, 2), "model"]), TypeError, r"models\[1\]"),
        (
            lambda: Ensemble([fastadv.models.small_cnn(), fastadv.models.small_cnn(num_classes=5)]),
            ValueError,
            "models: the members have different class counts",
        ),  # fmt: skip
        (lambda: Ensemble([nn.Linear(2, 2)], combine="max"), ValueError, "combine"),
        (lambda: Defended("model", []), TypeError, "model"),
        (lambda: Defended(nn.Identity(), [lambda x: x]), TypeError, r"transforms\[0\]"),
        (lambda: Defended(nn.Identity(), BitDepth(3)), TypeError, "transforms"),
        (lambda: parse_defense("bits:9"), ValueError, "bits must be in 1..8"),
        (lambda: parse_defense("blur:3"), ValueError, "unknown transform 'blur'"),
        (lambda: parse_defense("jpeg:high"), ValueError, "jpeg takes QUALITY"),
        (lambda: parse_defense(""), ValueError, "defense"),
        (lambda: MedianFilter(5)(torch.rand(1, 1, 2, 2)), ValueError, "too small"),
        (lambda: BitDepth(3)(torch.rand(2, 16)), ValueError, "images"),
    ],
)
def test_bad_arguments_name_the_argument(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_members_with_different_class_counts_are_found_at_the_first_call():
    class Net(nn.Module):  # declares nothing
        def __init__(self, k):
            super().__init__()
            self.fc = nn.Linear(4, k)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ValueError, match="models: the members have different class counts"):
        Ensemble([Net(3), Net(4)])(torch.rand(2, 4))


def test_parse_defense_builds_the_transforms_in_order():
    transforms = parse_defense("jpeg:75, bits:5,median:3,resize")
    assert [type(t).__name__ for t in transforms] == ["JPEG", "BitDepth", "MedianFilter", "RandomResizePad"]
    assert transforms[0].quality == 75 and transforms[1].bits == 5 and transforms[3].min_scale == 0.8


# ---- gradients: their own, and BPDA's under the adaptive switch ----


@pytest.mark.parametrize("make", [lambda: BitDepth(4), lambda: JPEG(75)], ids=["bits", "jpeg"])
def test_quantizers_have_a_zero_gradient_and_identity_under_bpda(make):
    t, x = make(), _images()
    assert torch.count_nonzero(_input_grad(t, x)) == 0
    with adaptive_gradients():
        grad = _input_grad(t, x)
        out = t(x)
    assert torch.equal(grad, torch.arange(x[0].numel()).view_as(x[0]).expand_as(x).float())
    assert torch.equal(out, t(x)), "the forward pass is the same under BPDA"


def test_median_and_resize_gradients():
    x = _images()
    median = MedianFilter(3)
    assert torch.count_nonzero(_input_grad(median, x)) > 0  # its own: to each window's median
    with adaptive_gradients():
        assert torch.equal(_input_grad(median, x), torch.arange(256.0).view(1, 16, 16).expand_as(x))
    resize = RandomResizePad(0.7, generator=torch.Generator().manual_seed(0))
    own = _input_grad(resize, x)
    resize.generator.manual_seed(0)
    with adaptive_gradients():
        assert torch.equal(_input_grad(resize, x), own), "exact: an adaptive attack keeps its gradient"


def test_the_adaptive_switch_is_per_thread_and_restored():
    seen = []
    assert not adaptive_active()
    with adaptive_gradients():
        thread = threading.Thread(target=lambda: seen.append(adaptive_active()))
        thread.start()
        thread.join()
        assert adaptive_active()
        with adaptive_gradients(False):
            assert not adaptive_active()
        assert adaptive_active()
    assert not adaptive_active() and seen == [False]
    with pytest.raises(KeyError), adaptive_gradients():
        raise KeyError
    assert not adaptive_active()


# ---- attacks on defended models ----


def test_plain_pgd_is_masked_and_bpda_pgd_is_not(digits_model):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    defended = Defended(model, [JPEG(75), BitDepth(5)])

    def robust(**options):
        result = fastadv.PGD(defended, eps=0.1, alpha=0.025, steps=6, generator=torch.Generator().manual_seed(0),
                             **options).run(x, y)  # fmt: skip
        return float((result.predicted == y).float().mean())

    plain, bpda = robust(), robust(adaptive=True)
    assert plain > 0.9 and bpda < 0.5, (plain, bpda)
    assert not adaptive_active(), "the attack restores the switch"


def test_eot_averages_over_that_many_forward_passes(digits_model):
    model, x, y = digits_model
    x, y = x[:8], y[:8]
    counted = CountingModel(Defended(model, [RandomResizePad(0.8, generator=torch.Generator().manual_seed(0))]))
    fastadv.PGD(counted, eps=0.1, alpha=0.02, steps=3, eot_samples=5)(x, y)
    assert counted.calls == 3 * 5
    counted.calls = 0
    fastadv.PGD(counted, eps=0.1, alpha=0.02, steps=3, eot_samples=5).run(x, y)
    assert counted.calls == 3 * 5 + 1  # and the final iterate's evaluation


def test_eot_is_the_mean_gradient(digits_model):
    """On a deterministic model every draw is the same: the mean is that gradient, so the
    iterates equal those without EOT; on a random one they follow the mean of the draws."""
    model, x, y = digits_model
    x, y = x[:16], y[:16]

    def pgd(m, n):
        return fastadv.PGD(m, eps=0.1, alpha=0.02, steps=3, eot_samples=n, generator=torch.Generator().manual_seed(1))

    assert torch.equal(pgd(model, 1)(x, y), pgd(model, 4)(x, y))
    random_model = Defended(model, [RandomResizePad(0.8, generator=torch.Generator().manual_seed(0))])
    attack = pgd(random_model, 3)
    call = attack._prepare(x, y)[2]
    with fastadv.attacks.model_mode.attack_mode(random_model, "eval"):
        _, _, grad = attack._loss_and_grad(x.clone(), y, call)
        random_model.transforms[0].generator.manual_seed(0)
        grads = []
        for _ in range(3):
            xg = x.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(F.cross_entropy(random_model(xg), y, reduction="sum"), xg)[0])
    torch.testing.assert_close(grad, torch.stack(grads).mean(0))


def test_randomized_defence_attacks_reproduce_with_seeded_generators(digits_model):
    model, x, y = digits_model
    x, y = x[:16], y[:16]

    def run():
        defended = Defended(model, [RandomResizePad(0.8, generator=torch.Generator().manual_seed(3))])
        return fastadv.PGD(defended, eps=0.1, alpha=0.02, steps=3, eot_samples=2, adaptive=True,
                           generator=torch.Generator().manual_seed(4)).run(x, y)  # fmt: skip

    a, b = run(), run()
    assert torch.equal(a.adv, b.adv) and torch.equal(a.success, b.success)


class _BatchNormNet(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _used_model(model):
    """`model` in train mode with a member in eval mode, moved BatchNorm statistics and .grad."""
    model.train()
    next(m for m in model.modules() if isinstance(m, nn.Dropout)).eval()
    model(torch.rand(8, 1, 16, 16)).sum().backward()
    return model


WRAPPERS = {
    "defended": lambda: Defended(_BatchNormNet(0), [JPEG(75), BitDepth(5), MedianFilter(3)]),
    "random": lambda: Defended(_BatchNormNet(0), [RandomResizePad(0.8, generator=torch.Generator().manual_seed(0))]),
    "ensemble": lambda: Ensemble([_BatchNormNet(1), _BatchNormNet(2), Defended(_BatchNormNet(3), [BitDepth(4)])]),
    "ensemble-probs": lambda: Ensemble([_BatchNormNet(1), _BatchNormNet(2)], combine="probs"),
}


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("adaptive", [False, True])
def test_wrappers_and_their_members_are_left_as_they_were(name, adaptive):
    model = _used_model(WRAPPERS[name]())
    before = snapshot(model)
    images = torch.rand(6, 1, 16, 16).requires_grad_(True)
    labels = torch.randint(0, 10, (6,))
    kept = (images.detach().clone(), images._version, labels.clone())
    fastadv.PGD(model, eps=0.1, steps=2, adaptive=adaptive, eot_samples=2).run(images, labels)
    fastadv.PGD(model, eps=0.1, steps=2, adaptive=adaptive, model_mode="train")(images, labels)
    assert_unchanged(model, before)
    assert torch.equal(images.detach(), kept[0]) and images._version == kept[1] and torch.equal(labels, kept[2])


def test_a_member_failing_mid_attack_leaves_every_member_restored():
    members = [_BatchNormNet(1), _BatchNormNet(2)]
    calls = {"n": 0}

    def fail_on_third(module, inputs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("member failed")

    ensemble = _used_model(Ensemble(members))
    before = snapshot(ensemble)
    members[1].register_forward_pre_hook(fail_on_third)
    with pytest.raises(RuntimeError, match="member failed"):
        fastadv.PGD(ensemble, eps=0.1, steps=4, model_mode="train")(torch.rand(4, 1, 16, 16), torch.zeros(4).long())
    assert_unchanged(ensemble, before)


def test_ensemble_combines_and_differentiates_through_every_member():
    members = [_BatchNormNet(s).eval() for s in (1, 2, 3)]
    x = torch.rand(5, 1, 16, 16)
    outs = [m(x) for m in members]
    torch.testing.assert_close(Ensemble(members)(x), torch.stack(outs).mean(0))
    probs = Ensemble(members, combine="probs")(x)
    torch.testing.assert_close(probs.exp(), torch.stack([o.softmax(1) for o in outs]).mean(0))
    grads = [_input_grad(m, x) for m in members]
    torch.testing.assert_close(_input_grad(Ensemble(members), x), sum(grads) / 3)
    assert all(torch.count_nonzero(g) > 0 for g in grads)


# ---- distillation ----


def test_distill_recipe_checks_and_settings():
    teacher = fastadv.models.small_cnn()
    with pytest.raises(TypeError, match="teacher"):
        Recipe("distill", teacher="model.pt")
    with pytest.raises(ValueError, match="teacher: only the distill recipe"):
        Recipe("pgd", teacher=teacher)
    with pytest.raises(ValueError, match="temperature"):
        Recipe("distill", temperature=0)
    settings = Recipe("distill", temperature=20, teacher=teacher).as_dict()
    assert settings["temperature"] == 20 and isinstance(settings["teacher"], str)
    assert Recipe("distill").as_dict()["teacher"] is None
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 10, (4,))
    assert adversarial_batch(teacher, x, y, Recipe("distill")) is x  # no attack


def test_distill_loss_uses_the_teachers_softmax_at_t_and_leaves_the_teacher_alone():
    teacher, student = _used_model(_BatchNormNet(1)), _BatchNormNet(2)
    before = snapshot(teacher)
    x, y = torch.rand(6, 1, 16, 16), torch.randint(0, 10, (6,))
    T = 50.0
    loss, logits = training_loss(student, x, x, y, Recipe("distill", temperature=T, teacher=teacher))
    assert_unchanged(teacher, before)
    teacher.eval()
    with torch.no_grad():
        soft = (teacher(x) / T).softmax(1)
    teacher.train()
    teacher.drop.eval()
    expected = -(soft * F.log_softmax(logits / T, 1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    hard, logits = training_loss(student, x, x, y, Recipe("distill", temperature=T))
    torch.testing.assert_close(hard, F.cross_entropy(logits / T, y))


# ---- the adaptive evaluation and its report ----


def test_adaptive_attacks_add_the_margin_loss():
    assert adaptive_attacks(["fgsm", "pgd"]) == ["fgsm", "pgd", "pgd-margin"]
    assert adaptive_attacks(["pgd-margin", "pgd"]) == ["pgd-margin", "pgd"]
    assert adaptive_attacks(["pgd-l2"]) == ["pgd-l2"]


def test_evaluate_adaptive_reports_both_runs_side_by_side(digits_model):
    model, x, y = digits_model
    data = (x[:32], y[:32])
    defended = Defended(model, [BitDepth(5)])
    report = evaluate(defended, data, ["pgd"], [0.1], steps=5, adaptive=True, progress=False)
    assert [r["attack"] for r in report["adaptive"]["attacks"]] == ["pgd", "pgd-margin"]
    assert report["adaptive"]["settings"]["adaptive"] is True
    (row,) = report["comparison"]
    assert row["robust_accuracy"] == report["worst_case"][0]["robust_accuracy"] > 0.9
    assert row["adaptive_robust_accuracy"] == report["adaptive"]["worst_case"][0]["robust_accuracy"] < 0.5
    assert row["gradient_masking_suspected"] and "pgd was the first to fall" in row["reason"]
    # the reason's number is the table's: the worst case over the adaptive attacks
    assert f"to {100 * row['adaptive_robust_accuracy']:.2f}% (their worst case" in row["reason"]
    table = format_comparison(report["comparison"])
    assert "gradient masking suspected" in table and "non-adaptive" in table
    bare = evaluate(model, data, ["pgd"], [0.1], steps=5, adaptive=True, progress=False)
    assert not bare["comparison"][0]["gradient_masking_suspected"] and bare["comparison"][0]["reason"] is None
    assert "adaptive" not in evaluate(model, (x[:4], y[:4]), ["fgsm"], [0.1], progress=False)


def test_compare_flags_only_gaps_above_ten_points():
    def report(robust):
        return {"clean_accuracy": 0.99, "worst_case": [{"eps": 0.1, "robust_accuracy": robust}],
                "attacks": [{"attack": "pgd", "eps": 0.1, "robust_accuracy": robust}]}  # fmt: skip

    assert not compare(report(0.5), report(0.4))[0]["gradient_masking_suspected"]  # exactly 10 points
    assert compare(report(0.5), report(0.39))[0]["gradient_masking_suspected"]
    assert not compare(report(0.3), report(0.5))[0]["gradient_masking_suspected"]


def test_evaluate_rejects_bad_adaptive_arguments(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="eot_samples"):
        evaluate(model, (x[:4], y[:4]), ["pgd"], [0.1], eot_samples=0)
    with pytest.raises(TypeError, match="adaptive"):
        evaluate(model, (x[:4], y[:4]), ["pgd"], [0.1], adaptive="yes")
    with pytest.raises(ValueError, match="eot_samples"):
        fastadv.PGD(model, eot_samples=0)
    with pytest.raises(fastadv.UnsupportedOption, match="eot_samples"):
        fastadv.CW(model, eot_samples=2)
