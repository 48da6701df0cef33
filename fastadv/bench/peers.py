"""The peer libraries' PGD for the attack benchmark: the Adversarial Robustness Toolbox
(`ProjectedGradientDescentPyTorch` through a `PyTorchClassifier`), Foolbox 3 (`LinfPGD`) and
advertorch (`LinfPGDAttack`). Each is optional: `unavailable_reason` says why one cannot run
here (not installed, or its import fails, with the library's own error), and `pgd` builds a
call returning the adversarial images as a tensor on the images' device.

Every peer is set up as the benchmark's other providers are: the same eps, step size and steps,
no random start, cross-entropy loss, L-inf, images in [0, 1].
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch

# provider -> (the module to import, what to install)
PEERS = {
    "art": ("art.attacks.evasion", "pip install adversarial-robustness-toolbox"),
    "foolbox": ("foolbox", "pip install foolbox"),
    "advertorch": ("advertorch.attacks", "pip install advertorch"),
}


@functools.cache
def unavailable_reason(provider: str) -> str | None:
    """None when the peer imports here; else why not: missing, or the error its import raises
    (advertorch 0.2.3 imports torch.autograd.gradcheck.zero_gradients, gone since torch 1.9)."""
    module, install = PEERS[provider]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module.startswith(error.name):
            return f"is not installed ({install})"
        return f"does not import: {type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001 - a peer's import can fail in any way; report it
        return f"does not import with torch {torch.__version__}: {type(error).__name__}: {error}"
    return None


def pgd(provider: str, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, alpha: float,
        steps: int) -> Callable[[], torch.Tensor]:  # fmt: skip
    """A call of the peer's L-inf PGD (no random start) on this batch."""
    return {"art": _art, "foolbox": _foolbox, "advertorch": _advertorch}[provider](
        model, images, labels, eps, alpha, steps
    )


def _art(model, images, labels, eps, alpha, steps):
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        classes = model(images[:1]).shape[1]
    classifier = PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]), nb_classes=classes,
        clip_values=(0.0, 1.0), device_type="gpu" if images.is_cuda else "cpu",
    )  # fmt: skip
    attack = ProjectedGradientDescentPyTorch(
        classifier, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps, num_random_init=0,
        batch_size=images.shape[0], verbose=False,
    )  # fmt: skip
    x, y = images.cpu().numpy(), labels.cpu().numpy()  # ART takes and returns numpy arrays
    return lambda: torch.from_numpy(attack.generate(x=x, y=y)).to(images.device)


def _foolbox(model, images, labels, eps, alpha, steps):
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=images.device)
    attack = foolbox.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=False)

    def call():
        _, clipped, _ = attack(fmodel, images, labels, epsilons=eps)
        return clipped

    return call


def _advertorch(model, images, labels, eps, alpha, steps):
    from advertorch.attacks import LinfPGDAttack

    attack = LinfPGDAttack(
        model, loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), eps=eps, nb_iter=steps, eps_iter=alpha,
        rand_init=False, clip_min=0.0, clip_max=1.0, targeted=False,
    )  # fmt: skip
    return lambda: attack.perturb(images, labels)
