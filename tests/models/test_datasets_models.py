"""The embedded digits data and the model definitions."""

import numpy as np
import pytest
import torch

from fastadv.data import digits
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


def test_model_files_carry_a_checksum_and_finite_weights(tmp_path):
    from fastadv import models
    from fastadv.checkpoint import CheckpointError

    torch.manual_seed(0)
    path = str(tmp_path / "m.pt")
    models.save(small_cnn(width=8), path)
    saved = torch.load(path, weights_only=True)
    assert len(saved["sha256"]) == 64 and models.load(path).fastadv_spec == saved["spec"]
    tampered = {**saved, "state_dict": {**saved["state_dict"]}}
    tampered["state_dict"]["0.bias"] = saved["state_dict"]["0.bias"] + 1e-3
    torch.save(tampered, path)
    with pytest.raises(CheckpointError, match="damaged"):
        models.load(path)
    data = bytearray((tmp_path / "m.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(b ^ 0x5A for b in data[middle : middle + 2000])
    (tmp_path / "m.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged|not a readable"):
        models.load(path)
    old = {k: v for k, v in saved.items() if k != "sha256"}  # a file written before checksums
    torch.save(old, path)
    assert isinstance(models.load(path), torch.nn.Module)
    nan = small_cnn(width=8)
    with torch.no_grad():
        nan[0].weight[0, 0, 0, 0] = float("nan")
    models.save(nan, path)
    with pytest.raises(CheckpointError, match=r"0\.weight holds non-finite"):
        models.load(path)
    for spec in ("small_cnn", {"arch": 3}, {"arch": "small_cnn", "kwargs": [8]}, None):
        torch.save({**old, "spec": spec}, path)
        with pytest.raises(CheckpointError, match="malformed spec"):
            models.load(path)


def test_load_npz_layouts_and_types(tmp_path):
    import numpy as np

    from fastadv.data import load_npz

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 5)
    for x, shape in [
        (rng.integers(0, 256, (5, 8, 8), dtype=np.uint8), (5, 1, 8, 8)),
        (rng.random((5, 3, 8, 8)), (5, 3, 8, 8)),
        (rng.random((5, 8, 8, 3)).astype(np.float32), (5, 3, 8, 8)),
    ]:
        np.savez(tmp_path / "d.npz", x=x, y=y)
        images, labels = load_npz(str(tmp_path / "d.npz"))
        assert images.shape == shape and images.dtype == torch.float32 and labels.dtype == torch.int64
        assert 0 <= float(images.min()) and float(images.max()) <= 1 and labels.tolist() == y.tolist()
    np.savez(tmp_path / "hwc.npz", x=np.arange(5 * 8 * 8 * 3, dtype=np.uint8).reshape(5, 8, 8, 3) % 200, y=y)
    images, _ = load_npz(str(tmp_path / "hwc.npz"))
    assert images[0, 2, 0, 1] * 255 == 5  # x[0, 0, 1, 2] = 5: channels moved to dim 1


@pytest.mark.parametrize(
    "arrays, part",
    [
        ({"x": np.zeros((2, 8, 8))}, "'x' and 'y'"),
        ({"x": np.zeros((2, 8)), "y": np.zeros(2, dtype=int)}, "x must be"),
        ({"x": np.zeros((2, 8, 8)), "y": np.zeros(3, dtype=int)}, "y must have shape"),
        ({"x": np.zeros((2, 8, 8)), "y": np.zeros(2)}, "integer"),
        ({"x": np.zeros((2, 8, 8)), "y": -np.ones(2, dtype=int)}, "non-negative"),
        ({"x": np.full((2, 8, 8), 2.0), "y": np.zeros(2, dtype=int)}, r"\[0, 1\]"),
        ({"x": np.zeros((2, 8, 8), dtype=np.int32), "y": np.zeros(2, dtype=int)}, "uint8 or floating"),
        ({"x": np.zeros((0, 8, 8)), "y": np.zeros(0, dtype=int)}, "no samples"),
        ({"x": np.zeros((2, 8, 8)), "y": np.array([1, 2**63], dtype=np.uint64)}, "fit in int64"),
        ({"x": np.zeros((2, 8, 8)), "y": np.array([True, False])}, "integer"),
    ],
)
def test_load_npz_errors(tmp_path, arrays, part):
    from fastadv.data import DataError, load_npz

    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=part):
        load_npz(str(tmp_path / "bad.npz"))


def test_load_npz_missing_and_damaged(tmp_path):
    from fastadv.data import DataError, load_npz

    with pytest.raises(DataError, match="no such file"):
        load_npz(str(tmp_path / "none.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "whole.npz", x=np.zeros((64, 8, 8)), y=np.zeros(64, dtype=int))
    whole = (tmp_path / "whole.npz").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 30):
        (tmp_path / "cut.npz").write_bytes(whole[:cut])
        with pytest.raises(DataError, match="not a readable"):
            load_npz(str(tmp_path / "cut.npz"))
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match=r"found one array \(\.npy\)"):
        load_npz(str(tmp_path / "x.npy"))


def test_image_folder(tmp_path):
    from PIL import Image

    from fastadv.data import DataError, image_folder

    for name, color, sizes in (("cat", (255, 0, 0), [(20, 10), (10, 10)]), ("dog", (0, 0, 255), [(12, 30)])):
        (tmp_path / name).mkdir()
        for i, size in enumerate(sizes):
            Image.new("RGB", size, color).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    images, labels, classes = image_folder(str(tmp_path), size=8)
    assert classes == ["cat", "dog"] and labels.tolist() == [0, 0, 1]
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.float32
    assert torch.allclose(images[0, :, 4, 4], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(images[2, :, 4, 4], torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(DataError, match="different sizes"):
        image_folder(str(tmp_path))
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        image_folder(str(tmp_path), size=8)
    with pytest.raises(DataError, match="no such folder"):
        image_folder(str(tmp_path / "missing"))


@pytest.mark.parametrize("pixels", [144, 250], ids=["warning", "error"])
def test_image_folder_refuses_a_decompression_bomb(tmp_path, monkeypatch, pixels):
    """Pillow's DecompressionBombError (over twice its limit) was a traceback and its
    DecompressionBombWarning (over the limit) went by; both are a DataError naming the file."""
    from PIL import Image

    from fastadv.data import DataError, image_folder

    (tmp_path / "a").mkdir()
    side = int(pixels**0.5) + 1
    Image.new("RGB", (side, side)).save(tmp_path / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"big.png: too many pixels to read safely \(a decompression bomb\?\)"):
        image_folder(str(tmp_path))
