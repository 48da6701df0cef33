"""Argument checks shared by every layer above the ops (attacks, evaluation, training, the
command line): each error names the argument and is raised before any state of the caller's is
touched. The op layer's own checks of tensors and step parameters are in `op_checks.py`."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from numbers import Real

import torch

# autocast dtypes by name: the command line's --amp choices are the short names
AMP_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_AMP = {
    None: None,
    torch.float16: torch.float16,
    torch.bfloat16: torch.bfloat16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    **AMP_NAMES,
}


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def parameter(name: str, value: object, *, nonnegative: bool) -> float | torch.Tensor:
    """A finite number, or a floating tensor (values checked when on the CPU; the ops check its
    shape against the batch)."""
    if _is_number(value):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        if nonnegative and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return value
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
        if value.device.type == "cpu" and value.numel():
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must be finite")
            if nonnegative and bool((value < 0).any()):
                raise ValueError(f"{name} must be >= 0, got a minimum of {value.min().item()}")
        return value.detach()
    raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")


def number(name: str, value: object, *, above: float | None = None, at_least: float | None = None,
           at_most: float | None = None) -> float:  # fmt: skip
    """A finite Python number within the given limits, as a float."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)  # type: ignore[arg-type]
    limits = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
              f"<= {at_most}" if at_most is not None else ""]  # fmt: skip
    if (
        not math.isfinite(value)
        or (above is not None and not value > above)
        or (at_least is not None and value < at_least)
        or (at_most is not None and value > at_most)
    ):
        raise ValueError(
            f"{name} must be finite {' and '.join(x for x in limits if x)}, got {value}".replace("  ", " ")
        )
    return value


def positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _is_nonempty_list(values: object) -> bool:
    return isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0


def probability(name: str, value: object) -> float:
    """A number in [0, 1], as a float."""
    return number(name, value, at_least=0, at_most=1)


def optional_number(name: str, value: object, **limits: float) -> float | None:
    """None, or a number as :func:`number` checks it."""
    return None if value is None else number(name, value, **limits)


def numbers(name: str, values: object, **limits: float) -> list[float]:
    """A non-empty list (or tuple) of numbers, each as :func:`number` checks it, as floats."""
    if not _is_nonempty_list(values):
        raise ValueError(f"{name} must be a non-empty list of numbers, got {values!r}")
    return [number(f"{name}[{i}]", v, **limits) for i, v in enumerate(values)]


def choices(name: str, values: object, allowed: Collection[str]) -> list[str]:
    """A non-empty list (or tuple) of names, each one of `allowed`."""
    if not _is_nonempty_list(values):
        raise ValueError(f"{name} must be a non-empty list among {', '.join(allowed)}; got {values!r}")
    unknown = [repr(v) if not isinstance(v, str) else v for v in values if v not in allowed]  # type: ignore[attr-defined]
    if unknown:
        raise ValueError(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return list(values)  # type: ignore[call-overload]


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def norm(value: object, name: str = "norm") -> str:
    """A norm as "linf" or "l2": torchattacks' spelling ("Linf", "L2") and fastadv's ("linf",
    "l2") alike, in any case."""
    key = value.lower() if isinstance(value, str) else None
    if key not in ("linf", "l2"):
        raise ValueError(f"{name} must be 'Linf' or 'L2' (or 'linf', 'l2'); got {value!r}")
    return key


def aliased(name: str, value: object, alias: str, alias_value: object, default: object) -> tuple[str, object]:
    """An argument with two names (torchattacks' `name`, fastadv's `alias`; None: not given):
    (the name it was given under, for later messages, and its value), `default` when neither
    was given. Both given is an error, even with the same value."""
    if value is not None and alias_value is not None:
        raise ValueError(f"{name} and {alias} are one argument under two names: give one, got both")
    if alias_value is not None:
        return alias, alias_value
    return name, default if value is None else value


def amp_dtype(value: object) -> torch.dtype | None:
    try:
        return _AMP[value]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ValueError(
            f"amp must be None, torch.float16 or torch.bfloat16 (or 'fp16', 'bf16'); got {value!r}"
        ) from None


def generator(value: object) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(value).__name__}")
    return value


def normalization(mean: object, std: object) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """mean and std as float32 1-d tensors (one value, or one per channel), both or neither."""
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither)")
    if mean is None:
        return None, None
    tensors = []
    for name, value in (("mean", mean), ("std", std)):
        try:
            t = torch.as_tensor(value, dtype=torch.float32).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor; got {value!r}") from None
        if t.numel() == 0 or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must hold finite values, got {value!r}")
        tensors.append(t)
    if bool((tensors[1] <= 0).any()):
        raise ValueError(f"std must be > 0, got {std!r}")
    if tensors[0].numel() != tensors[1].numel() and 1 not in (tensors[0].numel(), tensors[1].numel()):
        raise ValueError(f"mean and std must have as many values, got {tensors[0].numel()} and {tensors[1].numel()}")
    return tensors[0], tensors[1]


def images_and_labels(images: object, labels: object) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor, got {type(images).__name__}")
    if images.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"images must be float32, float16 or bfloat16, got {images.dtype}")
    if images.dim() < 2:
        raise ValueError(f"images must have a batch dim and at least one more, got shape {tuple(images.shape)}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (class indices), got {labels.dtype}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape [B] = [{images.shape[0]}], got {tuple(labels.shape)}")
    if labels.device != images.device:
        raise ValueError(f"labels must be on images' device {images.device}, got {labels.device}")


def logits(output: object, batch: int) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"model must return a tensor of logits [B, K], it returned {type(output).__name__}")
    if output.dim() != 2 or output.shape[0] != batch or output.shape[1] < 2:
        raise ValueError(f"model must return logits of shape [B, K] = [{batch}, K >= 2], got {tuple(output.shape)}")
    if not output.is_floating_point():
        raise TypeError(f"model must return floating logits, got {output.dtype}")
    return output


NON_FINITE_MODEL = "model: the model's outputs are not finite (NaN or infinity)"


def finite_outputs(logits: torch.Tensor, what: str = "images") -> None:
    """ValueError when `logits` (the model's outputs on finite inputs: clean images) hold a NaN
    or an infinity: a model that returns them has no class to attack or to score (a NaN row's
    argmax is class 0). One host sync; callers check a pass they make anyway (an attack's first
    forward, the evaluation's clean pass), never a step of an attack's loop."""
    finite = torch.isfinite(logits).all(1) if logits.dim() == 2 else torch.isfinite(logits).all().view(1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{NON_FINITE_MODEL} for {bad} of {finite.numel()} {what}")


def image_dataset(name: str, data: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair (images [N, ...] floating in [0, 1], labels [N] integers), N >= 1; returns it with
    int64 labels."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise TypeError(f"{name} must be a pair (images, labels) of tensors")
    images, labels = data
    if not images.is_floating_point() or images.dim() < 2:
        raise ValueError(f"{name}: images must be a floating tensor [N, ...], got {images.dtype} {tuple(images.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be an integer tensor (class indices), got {labels.dtype}")
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"{name}: labels must have shape [{images.shape[0]}] (one per image), got {tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} holds no samples")
    if not in_unit_range(images):
        raise ValueError(f"{name}: images must lie in [0, 1] (no NaN)")
    return images, labels.long()


def in_unit_range(images: torch.Tensor) -> bool:
    """Every value of `images` lies in [0, 1]; False for NaN (which fails every comparison, so
    it is tested as "min >= 0 and max <= 1", never as "min < 0 or max > 1"). The one check of
    image values that evaluate's tensors and `fastadv eval`'s .npz batches both go through."""
    return images.numel() == 0 or (float(images.min()) >= 0.0 and float(images.max()) <= 1.0)
