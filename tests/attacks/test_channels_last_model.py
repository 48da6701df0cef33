"""channels_last runs the model's convolutions in that layout: the weights of its nn.Conv2d
(plain, scripted, traced, or read by a torch.export graph) are held in channels_last for the
attack and given back as they were; "auto", AutoAttack's default, does so on a CPU when the
model has convolutions."""

import warnings

import pytest
import torch
from support.model_state import assert_unchanged, snapshot
from support.models import trained_batchnorm_cnn
from torch import nn

import fastadv
from fastadv.attacks import attack_mode
from fastadv.attacks.model_mode import conv_weights


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(12, 3, 8, 8, generator=generator), torch.randint(0, 10, (12,), generator=generator)


def _as(form: str, model: nn.Module, example: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():  # torch.jit.* are deprecated in favour of torch.export
        warnings.simplefilter("ignore")
        if form == "scripted":
            return torch.jit.script(model)
        if form == "traced":
            return torch.jit.trace(model, example)
        if form == "exported":
            return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    return model


def _is_channels_last(w: torch.Tensor) -> bool:
    return w.stride() == torch.empty_like(w, memory_format=torch.channels_last).stride()


@pytest.mark.parametrize("form", ["module", "scripted", "traced", "exported"])
def test_every_form_runs_its_convolutions_channels_last_and_gets_them_back(form):
    x, y = _inputs()
    model = _as(form, trained_batchnorm_cnn(), x)
    weights = conv_weights(model)
    assert len(weights) == 2 and all(w.shape[1:] in ((3, 3, 3), (8, 3, 3)) for w in weights)
    before, identities = snapshot(model), [id(w) for w in weights]
    expected = model(x)
    with attack_mode(model, "eval", channels_last=True):
        assert all(_is_channels_last(w) for w in conv_weights(model))
        inside = model(x)
    assert [id(w) for w in conv_weights(model)] == identities  # the same Parameter objects
    assert_unchanged(model, before)
    assert not any(_is_channels_last(w) for w in weights)
    # another summation order: the same numbers up to float32 rounding
    torch.testing.assert_close(inside, expected, rtol=1e-4, atol=1e-5)
    result = fastadv.PGD(model, eps=0.05, alpha=0.02, steps=3, channels_last=True).run(x, y)
    assert_unchanged(model, before)
    assert result.adv.is_contiguous(memory_format=torch.channels_last)


def test_subclasses_and_other_layers_are_left_alone():
    class ViewingConv(nn.Conv2d):  # a forward that views its weight: channels_last would break it
        def forward(self, x):
            w = self.weight.view(self.out_channels, -1).view_as(self.weight)
            return nn.functional.conv2d(x, w, self.bias, padding=1)

    model = nn.Sequential(ViewingConv(3, 4, 3), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    assert conv_weights(model) == []
    x, y = _inputs()
    fastadv.PGD(model, eps=0.05, alpha=0.03, steps=2, channels_last=True).run(x, y)  # runs: nothing was swapped


def test_auto_on_a_cpu_with_convolutions_only():
    x, y = _inputs()
    seen = []
    model = trained_batchnorm_cnn()
    model.features[3].register_forward_pre_hook(lambda m, args: seen.append(_is_channels_last(m.weight)))
    fastadv.PGD(model, eps=0.05, alpha=0.03, steps=2, channels_last="auto").run(x, y)
    assert seen and all(seen)
    seen.clear()
    fastadv.PGD(model, eps=0.05, alpha=0.03, steps=2).run(x, y)  # the single attacks' default: the model as given
    assert seen and not any(seen)
    # no convolution: nothing to gain, the images keep their layout
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    assert fastadv.PGD(linear, eps=0.05, alpha=0.03, steps=2, channels_last="auto").run(x, y).adv.is_contiguous()
    with pytest.raises(TypeError, match="channels_last must be True, False or 'auto'"):
        fastadv.PGD(model, eps=0.05, channels_last="yes")


def test_autoattack_runs_convolutions_channels_last_by_default():
    x, y = _inputs()
    model = trained_batchnorm_cnn()
    seen = []
    model.features[3].register_forward_pre_hook(lambda m, args: seen.append(_is_channels_last(m.weight)))
    before = snapshot(model)
    kwargs = {"eps": 0.05, "steps": 3, "n_queries": 20, "log": None}
    auto = fastadv.AutoAttack(model, **kwargs).run(x, y)
    assert seen and all(seen)
    assert_unchanged(model, before)
    explicit = fastadv.AutoAttack(model, channels_last=True, **kwargs).run(x, y)
    assert torch.equal(auto.adv, explicit.adv)  # "auto" is True here: the same computation
    assert auto.adv.is_contiguous()  # the caller's layout
    seen.clear()
    fastadv.AutoAttack(model, channels_last=False, **kwargs).run(x, y)
    assert seen and not any(seen)
