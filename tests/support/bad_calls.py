"""The bad calls every attack must reject, and the check that the error names the argument and
leaves the model and the caller's tensors as they were."""

from __future__ import annotations

import pytest
import torch

from support.model_state import assert_unchanged, snapshot
from support.models import digits_model


def _model_returning(value):
    def model(x):
        return value(x)

    return model


BAD_CALLS = [
    # (description, attack kwargs, images/labels transform, model transform, error type, message part)
    ("labels shape", {}, lambda x, y: (x, y[:-1]), None, ValueError, "labels"),
    ("labels 2-d", {}, lambda x, y: (x, y.view(-1, 1)), None, ValueError, "labels"),
    ("labels float", {}, lambda x, y: (x, y.float()), None, TypeError, "labels"),
    ("labels bool", {}, lambda x, y: (x, y > 3), None, TypeError, "labels"),
    ("labels range", {}, lambda x, y: (x, y + 10), None, ValueError, "labels"),
    ("labels negative", {}, lambda x, y: (x, y - 10), None, ValueError, "labels"),
    ("images list", {}, lambda x, y: (x.tolist(), y), None, TypeError, "images"),
    ("images int", {}, lambda x, y: ((x * 255).to(torch.uint8), y), None, TypeError, "images"),
    ("images above 1", {}, lambda x, y: (x + 1.5, y), None, ValueError, "images"),
    ("images below 0", {}, lambda x, y: (x - 0.5, y), None, ValueError, "images"),
    ("images NaN", {}, lambda x, y: (x.masked_fill(x > 0.9, float("nan")), y), None, ValueError, "images"),
    ("images 1-d", {}, lambda x, y: (x[:, 0, 0, 0], y), None, ValueError, "images"),
    ("model tuple", {}, None, lambda m: _model_returning(lambda x: (m(x),)), TypeError, "model"),
    ("model 3-d", {}, None, lambda m: _model_returning(lambda x: m(x).unsqueeze(1)), ValueError, "model"),
    ("model batch", {}, None, lambda m: _model_returning(lambda x: m(x)[:1]), ValueError, "model"),
    ("model one class", {}, None, lambda m: _model_returning(lambda x: m(x)[:, :1]), ValueError, "model"),
    ("model detached", {}, None, lambda m: _model_returning(lambda x: m(x).detach()), ValueError, "model"),
    ("channels_last 3-d", {"channels_last": True}, lambda x, y: (x[:, 0], y), None, ValueError, "channels_last"),
    ("mean channels", {"mean": [0.1, 0.2], "std": [1.0, 1.0]}, None, None, ValueError, "mean"),
    ("per-sample eps length", {"eps": torch.full((3,), 0.1)}, None, None, ValueError, "eps"),
]


def check_bad_call(make, case):
    """`make(model, **options)(images, labels)` on one of BAD_CALLS: the error names the
    argument, and the model and the caller's tensors are left as they were."""
    _, kwargs, transform_inputs, transform_model, error, part = case
    model, x, y = digits_model()
    x, y = x[:8], y[:8]
    before = snapshot(model)
    images, labels = transform_inputs(x, y) if transform_inputs else (x, y)
    kept = [t.clone() if isinstance(t, torch.Tensor) else t for t in (images, labels)]
    target = transform_model(model) if transform_model else model
    with pytest.raises(error, match=part):
        make(target, **kwargs)(images, labels)
    assert_unchanged(model, before)
    for original, now in zip(kept, (images, labels), strict=True):
        if isinstance(original, torch.Tensor):
            assert torch.equal(original, now) or (original.isnan() == now.isnan()).all()
