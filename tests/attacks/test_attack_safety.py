"""The caller's model and tensors are exactly as before an attack, after it returns and after it
raises; bad input gets an error naming the argument."""

import pytest
import torch
from support.bad_calls import BAD_CALLS, check_bad_call
from support.model_state import assert_unchanged, snapshot
from support.models import digits_model
from torch import nn

import fastadv

# Every attack, with settings small enough for a quick run, and the forward call at which the
# model raises in the test of a failure mid-attack (FGSM's call makes one forward pass only).
ATTACKS = {
    "fgsm": (lambda m, **kw: fastadv.FGSM(m, eps=0.1, random_start=True, **kw), 1),
    "pgd": (lambda m, **kw: fastadv.PGD(m, eps=0.1, alpha=0.03, steps=3, random_start=True, **kw), 3),
    "pgdl2": (lambda m, **kw: fastadv.PGDL2(m, eps=1.0, alpha=0.3, steps=3, random_start=True, **kw), 3),
    "mifgsm": (lambda m, **kw: fastadv.MIFGSM(m, eps=0.1, alpha=0.03, steps=3, **kw), 3),
    "apgd": (lambda m, **kw: fastadv.APGD(m, eps=0.1, steps=4, **kw), 3),
    "apgdt": (lambda m, **kw: fastadv.APGDT(m, eps=0.1, steps=4, n_target_classes=2, **kw), 3),
    "cw": (lambda m, **kw: fastadv.CW(m, steps=3, **kw), 2),
    "deepfool": (lambda m, **kw: fastadv.DeepFool(m, steps=3, **kw), 2),
    "jsma": (lambda m, **kw: fastadv.JSMA(m, gamma=0.05, **kw), 2),
    "fab": (lambda m, **kw: fastadv.FAB(m, eps=0.1, steps=2, **kw), 2),
    "square": (lambda m, **kw: fastadv.Square(m, eps=0.1, n_queries=3, **kw), 2),
}


class BatchNormNet(nn.Module):
    """BatchNorm, dropout, a frozen layer, and a record of what forward saw."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8 * 16 * 16, 10)
        self.head.weight.requires_grad_(False)
        self.raise_on_call = None
        self.calls = 0
        self.seen_requires_grad = set()
        self.seen_conv_strides = set()

    def forward(self, x):
        self.calls += 1
        self.seen_requires_grad.update(p.requires_grad for p in self.parameters())
        self.seen_conv_strides.add(self.conv.weight.stride())
        if self.calls == self.raise_on_call:
            raise RuntimeError("model failed mid-attack")
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _prepared_model(raise_on_call=None):
    torch.manual_seed(0)
    model = BatchNormNet()
    model.train()
    model.drop.eval()  # mixed modes must come back as they were
    x = torch.rand(16, 1, 16, 16)
    model(x).sum().backward()  # .grad fields and moved BatchNorm statistics to preserve
    model.calls = 0
    model.raise_on_call = raise_on_call
    model.seen_requires_grad.clear()
    model.seen_conv_strides.clear()
    return model


def _inputs():
    images = torch.rand(16, 1, 16, 16)
    labels = torch.randint(0, 10, (16,))
    return images, labels


def _caller_inputs():
    """Images (requiring grad, as a caller's may) and labels, and what must stay as it is."""
    images, labels = _inputs()
    images.requires_grad_(True)
    return images, labels, (images.detach().clone(), images._version, labels.clone())


def _assert_left_alone(model, before, images, labels, kept):
    """The model as `snapshot` saw it, no parameter requiring grad during the attack, and the
    caller's images (values, requires_grad, version) and labels as they were."""
    assert_unchanged(model, before)
    assert model.seen_requires_grad <= {False}, "parameters required grad during the attack"
    values, version, labels_before = kept
    assert torch.equal(images.detach(), values) and images.requires_grad and images._version == version
    assert torch.equal(labels, labels_before)


def test_every_attack_is_covered():
    covered = {type(make(nn.Linear(2, 2))).__name__ for make, _ in ATTACKS.values()}
    roots = {"Attack", "AttackResult", "GradientAttack", "UnsupportedOption"}
    classes = {name for name in fastadv.attacks.__all__ if isinstance(getattr(fastadv.attacks, name), type)}
    assert covered == classes - roots


# the convolution's weight [8, 1, 3, 3] as the model holds it, and in channels_last
CONTIGUOUS_STRIDES, CHANNELS_LAST_STRIDES = (9, 9, 3, 1), (9, 1, 3, 1)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_model_and_inputs_unchanged(name, mode, channels_last):
    model = _prepared_model()
    images, labels, kept = _caller_inputs()
    before = snapshot(model)
    adv = ATTACKS[name][0](model, model_mode=mode, channels_last=channels_last)(images, labels)
    _assert_left_alone(model, before, images, labels, kept)
    assert model.seen_requires_grad == {False}
    # channels_last: the attack ran the convolution's weight in that layout, and gave it back
    assert model.seen_conv_strides == {CHANNELS_LAST_STRIDES if channels_last else CONTIGUOUS_STRIDES}
    assert not adv.requires_grad and adv.shape == images.shape and adv.dtype == images.dtype


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_model_restored_when_the_attack_raises(name, channels_last):
    make, raise_on_call = ATTACKS[name]
    model = _prepared_model(raise_on_call=raise_on_call)
    images, labels, kept = _caller_inputs()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="model failed mid-attack"):
        make(model, model_mode="train", channels_last=channels_last)(images, labels)
    _assert_left_alone(model, before, images, labels, kept)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: fastadv.PGD(m, eps=0.1, steps=3, restarts=2, early_stop=True, model_mode="train"),
        lambda m: fastadv.APGD(m, eps=0.1, steps=4, n_restarts=2, early_stop=True, model_mode="train"),
        lambda m: fastadv.APGDT(m, eps=0.1, steps=4, n_target_classes=2, early_stop=True, model_mode="train"),
    ],
    ids=["pgd", "apgd", "apgdt"],
)
def test_early_stop_and_restarts_restore_state(make):
    model = _prepared_model()
    images, labels = _inputs()
    before = snapshot(model)
    make(model)(images, labels)
    assert_unchanged(model, before)


def test_works_under_no_grad_and_inference_mode():
    model, x, y = digits_model()
    x, y = x[:32], y[:32]
    attack = fastadv.PGD(model, eps=0.1, alpha=0.02, steps=3, random_start=False)
    expected = attack(x, y)
    with torch.no_grad():
        assert torch.equal(attack(x, y), expected)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        assert torch.equal(attack(xi, yi), expected)


def test_model_without_parameters_and_plain_functions():
    weight = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))

    class Fixed(nn.Module):  # no parameters, a buffer only
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", weight.clone())

        def forward(self, x):
            return x.flatten(1) @ self.weight.t()

    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    for model in (Fixed(), lambda t: t.flatten(1) @ weight.t()):
        result = fastadv.PGD(model, eps=0.2, alpha=0.05, steps=5).run(x, y)
        assert result.adv.shape == x.shape and (result.adv - x).abs().max() <= 0.2 + 1e-6
        assert result.success.dtype == torch.bool and (result.steps_used == 5).all()


def test_empty_batch():
    model, x, y = digits_model()
    result = fastadv.PGD(model).run(x[:0], y[:0])
    assert result.adv.shape == (0, 1, 16, 16) and result.success.shape == (0,)


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls(case):
    check_bad_call(lambda m, **kw: fastadv.PGD(m, **{"eps": 0.1, "alpha": 0.02, "steps": 2, **kw}), case)


BAD_OPTIONS = [
    ("eps", {"eps": -0.1}, ValueError),
    ("eps", {"eps": float("nan")}, ValueError),
    ("eps", {"eps": "big"}, TypeError),
    ("eps", {"eps": torch.tensor([-0.1, 0.1])}, ValueError),
    ("alpha", {"alpha": -1}, ValueError),
    ("steps", {"steps": 0}, ValueError),
    ("steps", {"steps": 2.5}, TypeError),
    ("restarts", {"restarts": 0}, ValueError),
    ("restarts", {"restarts": 2, "random_start": False}, ValueError),
    ("loss", {"loss": "hinge"}, ValueError),
    ("targeted", {"targeted": 1}, TypeError),
    ("early_stop", {"early_stop": "yes"}, TypeError),
    ("lower", {"lower": 1.0, "upper": 0.0}, ValueError),
    ("mean", {"mean": [0.5]}, ValueError),
    ("std", {"mean": [0.5], "std": [0.0]}, ValueError),
    ("amp", {"amp": torch.float64}, ValueError),
    ("backend", {"backend": "fastest"}, ValueError),
    ("generator", {"generator": 3}, TypeError),
    ("model_mode", {"model_mode": "test"}, ValueError),
    ("model", {"model": "resnet"}, TypeError),
]


@pytest.mark.parametrize("name, kwargs, error", BAD_OPTIONS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_OPTIONS)])
def test_bad_options(name, kwargs, error):
    model = kwargs.pop("model", digits_model()[0])
    with pytest.raises(error, match=name):
        fastadv.PGD(model, **kwargs)


def test_generator_on_another_device():
    model = digits_model()[0]
    images, labels = torch.rand(2, 1, 16, 16, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="generator"):
        fastadv.PGD(model, generator=torch.Generator())(images, labels)


def test_bad_functional_and_specific_arguments():
    model, x, y = digits_model()
    with pytest.raises(ValueError, match="norm"):
        fastadv.pgd(model, x[:2], y[:2], eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="decay"):
        fastadv.MIFGSM(model, decay=-1.0)
    with pytest.raises(TypeError, match="steps"):
        fastadv.FGSM(model, steps=3)
