"""The embedded digits data and the model definitions."""

import pytest
import torch

from fastadv.datasets import digits
from fastadv.models import resnet18, small_cnn


def test_digits_split_is_fixed_and_disjoint():
    x_train, y_train = digits("train")
    x_test, y_test = digits("test")
    x_all, y_all = digits("all")
    assert x_train.shape == (1438, 1, 16, 16) and x_test.shape == (359, 1, 16, 16)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert 0 <= float(x_all.min()) and float(x_all.max()) <= 1 and float(x_all.max()) > 0.99
    assert sorted(y_all.unique().tolist()) == list(range(10))
    assert torch.equal(digits("test")[0], x_test), "the split must not change between calls"
    flat = lambda t: {tuple(r) for r in t.flatten(1).tolist()}  # noqa: E731
    assert len(flat(x_train) & flat(x_test)) <= 2  # (the UCI set has a few duplicate images)
    assert len(y_train) + len(y_test) == len(y_all)


def test_digits_bad_split():
    with pytest.raises(ValueError, match="split"):
        digits("validation")


def test_models_shapes_and_arguments():
    assert small_cnn()(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    assert small_cnn(in_channels=3, num_classes=5, width=8)(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert resnet18()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        small_cnn(width=0)
