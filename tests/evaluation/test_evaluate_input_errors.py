"""evaluate()'s bad input, each refused before any batch with one line that names the problem:
NaN images (the same check as `fastadv eval`'s .npz batches), labels outside the model's
classes, labels of a floating dtype, a state_path that is a folder or lies under a file."""

import numpy as np
import pytest

from fastadv.data import DataError, NpzSource, TensorSource, as_selection
from fastadv.evaluation import evaluate


@pytest.fixture(scope="module")
def small(digits_model):
    model, x, y = digits_model
    return model, x[:8].clone(), y[:8].clone()


def test_a_nan_image_is_refused_as_fastadv_eval_refuses_it(small, tmp_path):
    model, x, y = small
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^data: images must lie in \[0, 1\] \(no NaN\)$"):
        evaluate(model, (x, y), ["fgsm"], [0.1], progress=False)
    # the .npz path of `fastadv eval` says the same of the same images
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    with pytest.raises(DataError, match=r"no NaN"):
        evaluate(model, NpzSource(str(tmp_path / "d.npz")), ["fgsm"], [0.1], progress=False, workers=0)


def test_labels_outside_the_models_classes(small):
    model, x, y = small
    with pytest.raises(ValueError, match=r"^data: labels must lie in \[0, 10\) for a model with 10 outputs; found 1"):
        evaluate(model, (x, y + 10), ["fgsm"], [0.1], progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        evaluate(model, TensorSource(x, y - 1 - int(y.max())), ["fgsm"], [0.1], progress=False)


def test_floating_labels_name_the_dtype(small):
    model, x, y = small
    dtype = r"^data: labels must be an integer tensor \(class indices\), got torch.float32$"
    with pytest.raises(ValueError, match=dtype):
        evaluate(model, (x, y.float()), ["fgsm"], [0.1], progress=False)
    with pytest.raises(ValueError, match=r"labels must have shape \[8\] \(one per image\), got \(7,\)"):
        as_selection("data", (x, y[:7]))


def test_a_state_path_that_cannot_be_a_file(small, tmp_path):
    model, x, y = small
    with pytest.raises(ValueError, match=r"^state_path: .* is a folder; give a file in it"):
        evaluate(model, (x, y), ["fgsm"], [0.1], progress=False, state_path=str(tmp_path))
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    with pytest.raises(ValueError, match=r"^state_path: .*a-file is a file, so .* cannot be created under it$"):
        evaluate(model, (x, y), ["fgsm"], [0.1], progress=False, state_path=str(blocker / "sub" / "state.pt"))
    assert blocker.read_text() == "keep me"
    # a path in folders that do not exist yet is fine: they are created
    report = evaluate(model, (x, y), ["fgsm"], [0.1], progress=False, state_path=str(tmp_path / "new" / "s.pt"))
    assert report["samples"] == 8 and (tmp_path / "new" / "s.pt").is_file()
