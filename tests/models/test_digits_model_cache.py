"""`fastadv.digits_models.standard_digits_model()` reuses the model `fastadv eval` caches (it
retrained, 30 s, every call), trains and caches it when the file is missing or damaged, and
`cache=None` trains without touching any file. The digits' docstrings say the size they are."""

import pytest
import torch

import fastadv.data
from fastadv import digits_models, models
from fastadv.__main__ import build_parser


@pytest.fixture
def fast_training(monkeypatch):
    """train_standard replaced by a recorder (the real one takes 30 s): the weights are those of
    the seeded small_cnn."""
    calls = []

    def record(model, *args, **kwargs):
        calls.append(1)
        return model.eval()

    monkeypatch.setattr(digits_models, "train_standard", record)
    return calls


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_trains_once_then_reads_the_cache(tmp_path, fast_training):
    path = tmp_path / "sub" / "digits.pt"
    first = digits_models.standard_digits_model(path)
    assert fast_training == [1] and path.exists()
    second = digits_models.standard_digits_model(path)
    assert fast_training == [1], "trained again instead of reading the cache"
    assert _same(first, second) and not second.training


def test_default_cache_is_the_clis(tmp_path, monkeypatch, fast_training):
    monkeypatch.setenv("FASTADV_CACHE", str(tmp_path))
    assert (
        build_parser().parse_args(["eval"]).cache
        == build_parser().parse_args(["demo"]).cache
        == digits_models.digits_model_cache()
        == str(tmp_path / "digits-small_cnn-standard.pt")
    )
    cached = models.small_cnn()
    models.save(cached, digits_models.digits_model_cache(), recipe="standard")  # as fastadv eval leaves it
    assert _same(digits_models.standard_digits_model(), cached) and fast_training == []


def test_damaged_cache_retrained_and_rewritten(tmp_path, fast_training):
    path = tmp_path / "digits.pt"
    path.write_bytes(b"not a model")
    digits_models.standard_digits_model(path)
    assert fast_training == [1] and isinstance(models.load(str(path)), torch.nn.Module)


def test_cache_none_writes_nothing(tmp_path, monkeypatch, fast_training):
    monkeypatch.setenv("FASTADV_CACHE", str(tmp_path))
    digits_models.standard_digits_model(None)
    digits_models.standard_digits_model(None)
    assert fast_training == [1, 1] and list(tmp_path.iterdir()) == []


def test_unwritable_cache_warns_and_returns_the_model(tmp_path, fast_training):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not cache the digits model"):
        model = digits_models.standard_digits_model(blocker / "digits.pt")  # a folder under a file
    assert isinstance(model, torch.nn.Module)


def test_digits_docstrings_say_16x16():
    images, _ = fastadv.data.digits("test")
    assert tuple(images.shape[1:]) == (1, 16, 16)
    for doc in (fastadv.data.__doc__, fastadv.data.digits.__doc__):
        assert "16x16" in doc or "16, 16" in doc
        assert "grey 8x8 images" not in doc
