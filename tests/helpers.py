"""What the tests share (no test module imports another): the backends and dtypes under test,
exact and tolerant comparisons, random op inputs, the digits CNN, a plain PyTorch attack loop
written independently of fastadv's, a forward counter, a model-state snapshot and the bad calls
every attack must reject."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cuda_emulation import backend as cuda_emulation
from torch import nn

from fastadv.backends import BACKENDS
from fastadv.data import digits
from fastadv.digits_models import fgsm_rs_digits_model as _train_fgsm_rs
from fastadv.digits_models import standard_digits_model
from fastadv.models import small_cnn

# ---- backends, dtypes, comparisons ----

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Without a GPU, Triton runs in its interpreter and the CUDA kernels in the emulation (built on
# first use, about a minute): both are far slower than the C++ loop, so their cases are `slow`
# (the full run, CI's, has them; `-m "not slow"` is the quick loop).
_SLOW_HERE = (() if torch.cuda.is_available() else ("triton",)) + cuda_emulation.NAMES


def backend_params(names) -> tuple:
    """The backend names as parameters: the slow ones here marked `slow`, Triton's `triton` (so
    that .ci/gpu-stack can select them: the interpreter differs between Triton versions)."""

    def marks(name):
        return [pytest.mark.slow] * (name in _SLOW_HERE) + [pytest.mark.triton] * (name == "triton")

    return tuple(pytest.param(name, marks=marks(name)) for name in names)


FAST_BACKENDS = backend_params(("triton", "cpu", "cuda") + cuda_emulation.NAMES)
# The backends that run CPU tensors on this machine.
CPU_BACKENDS = backend_params(n for n, b in BACKENDS.items() if b.unavailable_reason(torch.device("cpu")) is None)


def device_params():
    """The devices to test, with the cuda one marked (so `-m cuda` selects the GPU suite)."""
    return [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES] + (
        [] if "cuda" in DEVICES else [pytest.param("cuda", marks=[pytest.mark.cuda])]
    )


def require_backend(name: str, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    reason = BACKENDS[name].unavailable_reason(torch.device(device))
    if reason is not None:
        pytest.skip(f"backend {name} unavailable on {device}: {reason}")


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, context: str = "") -> None:
    """Bitwise-equal values, the sign of a zero included (DESIGN.md, signed zeros); NaN equal to
    NaN whatever its payload. On failure, the first mismatches."""
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.float().cpu(), expected.float().cpu()
    same = ((a == e) & (torch.signbit(a) == torch.signbit(e))) | (torch.isnan(a) & torch.isnan(e))
    if bool(same.all()):
        return
    bad = (~same).nonzero()[:8]
    rows = [f"  at {tuple(i.tolist())}: got {a[tuple(i)].item()!r}, expected {e[tuple(i)].item()!r}" for i in bad]
    raise AssertionError(f"{context}: {int((~same).sum())} of {a.numel()} elements differ\n" + "\n".join(rows))


TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.float16: (2**-10, 2**-14), torch.bfloat16: (2**-7, 2**-14)}


def assert_close(actual, expected, context=""):
    rtol, atol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{context}: {m}")


# ---- random op inputs: shapes, layouts, gradients with specials, parameter kinds ----

# Shapes with awkward sizes: one element, odd lengths, 2-D, 5-D, C == 1, and empty.
SHAPES = [(1,), (1023,), (3, 7, 5, 5), (2, 1023), (4, 16), (2, 3, 4, 5, 6), (5, 3, 8, 8), (2, 1, 4, 4), (0, 3, 4, 4)]
PARAM_KINDS = ("scalar", "tensor0d", "per_sample", "per_channel", "per_sample_channel")


def layouts_for(shape):
    names = ["contiguous", "strided", "mixed"]
    if len(shape) in (4, 5):
        names.append("channels_last")
    return names


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: channels_last, or an arbitrary strided view."""
    if layout == "channels_last" and t.dim() in (4, 5):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if layout == "strided":
        wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
        view = wide[..., ::2]
        view.copy_(t)
        return view
    return t.contiguous()


def make_inputs(shape, dtype, grad_dtype, device, layout, gen):
    """x in [0, 1], x_adv near x (some outside the eps ball and the bounds), a gradient with
    zeros, NaNs and infinities."""
    x = torch.rand(shape, generator=gen)
    x_adv = x + 0.15 * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    pick = torch.rand(shape, generator=gen)
    grad[pick < 0.1] = 0.0
    grad[(pick >= 0.1) & (pick < 0.15)] = float("nan")
    grad[(pick >= 0.15) & (pick < 0.2)] = float("inf")
    grad[(pick >= 0.2) & (pick < 0.25)] = -float("inf")
    x_adv, x = x_adv.to(device, dtype), x.to(device, dtype)
    grad = grad.to(device, grad_dtype)
    if layout == "mixed":  # each input in a different layout
        return to_layout(x_adv, "channels_last"), to_layout(grad, "strided"), x
    return to_layout(x_adv, layout), to_layout(grad, layout), to_layout(x, layout)


def _param_shape(kind, shape):
    batch = shape[0]
    channels = shape[1] if len(shape) >= 2 else 1
    rest = (1,) * max(len(shape) - 2, 0)
    if kind == "per_sample":
        return (batch,)
    if kind == "per_channel":
        return (1, channels) + rest if len(shape) >= 2 else (1,)
    if kind == "per_sample_channel":
        return (batch, channels) + rest if len(shape) >= 2 else (batch,)
    return ()


def make_params(kind, shape, device, gen, names=("eps", "alpha", "lower", "upper")):
    """eps in [0, 0.1], alpha in [0, 0.05], lower in [-0.1, 0.3], upper in [0.7, 1.1]."""
    ranges = {"eps": (0.0, 0.1), "alpha": (0.0, 0.05), "lower": (-0.1, 0.3), "upper": (0.7, 1.1)}
    out = {}
    for name in names:
        lo, hi = ranges[name]
        if kind == "scalar":
            out[name] = lo + (hi - lo) * torch.rand((), generator=gen).item()
            continue
        value = lo + (hi - lo) * torch.rand(_param_shape(kind, shape), generator=gen)
        out[name] = value.to(device)
    return out


# ---- the digits CNN, a plain attack loop, counters and snapshots ----


_REPO = Path(__file__).resolve().parents[1]


def _cache_file(name: str, sources: tuple[str, ...]) -> Path:
    """Where trained test weights are kept between test runs (a quick `-m "not slow"` loop would
    spend most of its time training them). The name holds a hash of what determines them, the
    given fastadv sources and torch's version, so a change to any retrains."""
    key = hashlib.sha256(torch.__version__.encode())
    for source in sources:
        key.update((_REPO / "fastadv" / source).read_bytes())
    return _REPO / ".pytest_cache" / "fastadv" / f"{name}-{key.hexdigest()[:16]}.pt"


def _cached_state(cache: Path, train) -> dict:
    """The state dict in `cache`, or `train()`'s model's, written there atomically (a concurrent
    run never reads half a file)."""
    try:
        return torch.load(cache, weights_only=True)
    except (OSError, RuntimeError, EOFError):
        pass  # not cached yet, or unreadable: train
    state = {k: v.clone() for k, v in train().state_dict().items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, partial)
    partial.replace(cache)
    return state


# what the digits models' weights depend on (fastadv.digits_models; the FGSM-RS one trains with fit)
_DIGITS_SOURCES = ("models/architectures.py", "data/opening.py", "digits_models.py", "recipes.py", "train.py")


@functools.lru_cache(maxsize=1)
def _trained_digits_state() -> tuple[dict, torch.Tensor, torch.Tensor]:
    images, labels = digits("test")
    # cache=None: trained here (keyed by the sources' hash), never read from the user's cache
    train = functools.partial(standard_digits_model, cache=None)
    return _cached_state(_cache_file("digits", _DIGITS_SOURCES), train), images, labels


def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh copy of the seeded digits CNN (eval mode) and the test split."""
    state, images, labels = _trained_digits_state()
    model = small_cnn()
    model.load_state_dict(state)
    return model.eval(), images.clone(), labels.clone()


def fgsm_rs_digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh copy of the digits CNN adversarially trained with FGSM-RS at eps 0.1 (10 epochs,
    seeded; about 97% clean and 70% robust accuracy under PGD-20), eval mode, and the test split."""
    state = _cached_state(_cache_file("digits-fgsm-rs", _DIGITS_SOURCES), _train_fgsm_rs)
    model = small_cnn()
    model.load_state_dict(state)
    images, labels = digits("test")
    return model.eval(), images, labels


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def plain_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true = logits[torch.arange(len(labels)), labels]
    others = logits.clone()
    others[torch.arange(len(labels)), labels] = -float("inf")
    return others.max(dim=1).values - true


def plain_attack(
    model, x, y, start, *, eps, alpha, steps, norm="linf", targeted=False, loss="ce", decay=None, keep=True
):
    """Straightforward PGD (L-inf or L2, optional MI-FGSM momentum) from `start`, summed loss.
    Returns the final iterate; with `keep` (the contract of Attack.run), a sample whose final
    iterate does not fool the model but an earlier one did gets the latest such iterate."""

    def loss_of(logits):
        per_sample = F.cross_entropy(logits, y, reduction="none") if loss == "ce" else plain_margin(logits, y)
        return per_sample

    def fooled(logits):
        return (logits.argmax(1) == y) if targeted else (logits.argmax(1) != y)

    kept = start.clone()
    ever = torch.zeros(len(y), dtype=torch.bool)
    momentum = torch.zeros_like(x)
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        logits = model(adv)
        grad = torch.autograd.grad(loss_of(logits).sum(), adv)[0]
        adv = adv.detach()
        hit = fooled(logits.detach())
        kept[hit] = adv[hit]
        ever |= hit
        if targeted:
            grad = -grad
        if decay is not None:
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
            momentum = decay * momentum + grad
            grad = momentum
        if norm == "linf":
            adv = adv + alpha * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps)
        else:
            g_norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            adv = adv + alpha * grad / g_norm
            delta = adv - x
            d_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = torch.where(d_norm > eps, delta * (eps / d_norm), delta)
            adv = x + delta
        adv = adv.clamp(0, 1)
    if not keep:
        return adv
    with torch.no_grad():
        hit = fooled(model(adv))
    kept[hit] = adv[hit]
    ever |= hit
    return torch.where(ever.view(-1, 1, 1, 1), kept, adv)


def uniform_start(x, eps, seed):
    """The engine's L-inf random start for torch.Generator().manual_seed(seed)."""
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * eps
    return torch.min(torch.max(x + noise, x - eps), x + eps).clamp(0, 1)


class GammaModel(nn.Module):
    """x ** (1 / 2.2) before the network: the input gradient is infinite at black pixels, which is
    how the tests make attacks meet non-finite gradients and candidates."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t):
        return self.net(t.pow(1 / 2.2))


class CountingModel(nn.Module):
    """Wraps a model; counts forward calls and the samples they saw."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.samples = 0

    def forward(self, x):
        self.calls += 1
        self.samples += x.shape[0]
        return self.inner(x)


def snapshot(model: nn.Module) -> dict:
    """Everything an attack must leave as it was."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "buffer_ids": {k: id(v) for k, v in model.named_buffers()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"], "module training flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    for a, b in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b), "a parameter changed"
    for (grad_after, _), (grad_before, value_before) in zip(after["grads"], before["grads"], strict=True):
        assert grad_after is grad_before, ".grad was replaced"
        if value_before is not None:
            assert torch.equal(grad_after, value_before), ".grad values changed"
    assert after["buffer_ids"] == before["buffer_ids"], "a buffer was replaced"
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value), f"buffer {name} changed"


# ---- bad calls every attack must reject ----


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


def assert_same_report(a: dict, b: dict) -> None:
    """Two evaluate() reports agree on everything but timings: samples, clean accuracy, worst
    case and every attack's row (its images/s aside)."""
    assert a["samples"] == b["samples"] and a["clean_accuracy"] == b["clean_accuracy"]
    assert a["worst_case"] == b["worst_case"]
    for ra, rb in zip(a["attacks"], b["attacks"], strict=True):
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == {
            k: v for k, v in rb.items() if k != "images_per_s"
        }


def interrupt_at_batch(monkeypatch, number: int, run) -> None:
    """Calls run() with evaluate's per-batch step raising KeyboardInterrupt at batch `number`
    (as a user's Ctrl-C there would), checks that it did, and puts the real step back: what a
    resumed run then has to finish from its state file."""
    import fastadv.evaluate as ev

    real, calls = ev._evaluate_batch, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "_evaluate_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(ev, "_evaluate_batch", real)


def without_timings(report):
    """A JSON report (evaluate's, or anything holding reports) less what depends on the clock:
    time stamps, data-loading waits and images/s, at every depth; as JSON would give it back."""
    import json

    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k not in ("timestamp", "data_loading", "images_per_s")}
        return [drop(v) for v in value] if isinstance(value, list) else value

    return drop(json.loads(json.dumps(report)))
