"""Whether a model and a data set fit each other, checked on one image before any work: what
`fastadv eval` and `fastadv train` check of --model and --data (the command line adds the
option's name to the message), and what a Python caller can check the same way."""

from __future__ import annotations

import torch


def check_fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The model takes `images` (a batch; its first image is run, on the model's device) and has
    a class for every label of `labels`; ValueError saying which does not hold."""
    device = next(iter(model.parameters()), images).device
    try:
        with torch.no_grad():
            logits = model(images[:1].to(device))
    except (RuntimeError, AssertionError) as error:  # (a torch.export program's guards raise AssertionError)
        raise ValueError(f"images of shape {tuple(images.shape[1:])} do not fit the model "
                         f"({str(error).splitlines()[0]})") from None  # fmt: skip
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels go up to {int(labels.max())} but the model has {logits.shape[1]} classes")
