"""Datasets that need no download.

`digits` is scikit-learn's copy of the UCI handwritten digits (1797 grey 8x8 images, ten
classes), which ships inside the scikit-learn package, so it loads offline in milliseconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIGITS_SIZE = 16
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits as ``(images, labels)``.

    Images are float32 ``[N, 1, 16, 16]`` in [0, 1]: the 8x8 originals (values 0..16) divided by
    16 and upsampled bilinearly (``align_corners=False``, which keeps values in [0, 1]). Labels are
    int64 in 0..9. The split is fixed: a permutation of the 1797 samples drawn from
    ``torch.Generator().manual_seed(0)``; the first 20% (359 samples) are "test", the other 1438
    "train". ``split="all"`` returns every sample in the original order.

    Raises:
        ValueError: ``split`` is not "train", "test" or "all".
        ImportError: scikit-learn is not installed.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("fastadv.datasets.digits needs scikit-learn (pip install scikit-learn)") from error
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0).contiguous()  # exact [0, 1] despite rounding in the filter
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if split == "all":
        return images, labels
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(len(labels) * DIGITS_TEST_FRACTION)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return images[chosen], labels[chosen]
