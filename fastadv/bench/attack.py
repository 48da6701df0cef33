"""Attack images/s (PGD, APGD, CW): fastadv against a naive loop, torchattacks and the model's own
forward + input-gradient time, on the same model and batch, in one run.

Models: "digits-cnn" (fastadv.digits_models.standard_digits_model: small_cnn trained on the digits training
split, attacked on the test split: an undefended model, so early stopping has work to skip),
"digits-cnn-fgsm-rs" (fgsm_rs_digits_model: the same CNN trained with FGSM-RS at eps 0.1 for 10 epochs,
seeded, about 20 s on a CPU: a robust model, on which AutoAttack's later stages do the work),
"resnet18-cifar" (3x32x32) and "resnet18-imagenet" (3x224x224), CIFAR-style ResNet-18 with
random weights whose labels are its own clean predictions (every sample starts correctly
classified, so early stopping saves only what the attack earns).

Providers:
- naive: the loop many people write: loss.backward() (so weight gradients are computed too),
  mean loss, eager projection and clamp.
- naive-autograd: the same with torch.autograd.grad for the input gradient only (what
  torchattacks does; the stand-in for it where its wheel is missing).
- torchattacks: torchattacks.PGD, when it is installed (an optional benchmark dependency).
- art, foolbox, advertorch: the other peer libraries' PGD (`peers.py`), each when it imports.
- fastadv, fastadv-early-stop: fastadv.PGD in float32, without and with early stopping.
- fastadv-early-stop-k4: early stopping that compacts every 4 steps (one host sync per 4 steps).
- fastadv-bf16-cl, fastadv-bf16-cl-early-stop: bfloat16 autocast and channels_last.
- fastadv-bf16-cl-graph: bfloat16 autocast, channels_last and the step in a CUDA graph (GPU only).
- limit: the model's forward plus input-gradient backward, `steps` times (what a PGD step cannot
  beat without early stopping or lower precision).

PGD runs without a random start in every provider (the same deterministic attack everywhere, so
the robust accuracies each reaches, reported beside the speed, must agree: bf16 autocast aside).

Attacks (`kind`): "pgd" (every provider above), "apgd" (APGD-CE, torchattacks.APGD against
fastadv.APGD with and without early stopping, one restart) and "cw" (CW-L2 with c=1, kappa=0,
lr=0.01, one round, both with their default early abort of a stalled run: torchattacks stops
when the batch's cost rises, fastadv when it falls by less than 0.01%, checked every tenth of the
steps, so on a model where the cost stalls at once both do only a few steps) and "autoattack".

"autoattack": AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square, each on the samples
the earlier ones left robust), fastadv.AutoAttack(version="standard", seed=0) against torchattacks
at equal budgets. torchattacks.AutoAttack(version="standard") builds its stages at its attacks'
defaults, which are not the original's (APGD, APGD-T and FAB run 10 steps where the original runs
100, and its Square rescales the query schedule where the original's stage does not), so the
torchattacks provider builds the same cascade itself, as torchattacks.AutoAttack does, with the
original's budgets set: torchattacks.MultiAttack([APGD(norm="Linf", eps, steps, n_restarts=1,
loss="ce", seed=0), APGDT(eps, steps, n_restarts=1, n_classes=10, seed=0), FAB(eps, steps,
n_restarts=1, multi_targeted=True, n_classes=10, seed=0), Square(eps, n_queries, n_restarts=1,
p_init=0.8, resc_schedule=False, seed=0)]). `steps` is APGD's and FAB's iterations (per target
class for APGD-T and FAB-T, 9 targets) and Square runs 50 x steps queries: the standard version's
100 steps and 5000 queries at the command line's default for this kind (--steps 100). The
robust accuracy each reaches must agree within noise (the random starts differ).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..attacks.catalog import ATTACKS
from ..data import digits
from ..digits_models import fgsm_rs_digits_model, standard_digits_model
from ..models import resnet18, small_cnn
from . import peers
from .results import Row, environment, medians_by_case
from .timing import measure, quantiles

# name -> (image shape, default batch on cpu, default batch on cuda)
MODELS = {
    "digits-cnn": ((1, 16, 16), 256, 1024),
    "digits-cnn-fgsm-rs": ((1, 16, 16), 256, 1024),
    "resnet18-cifar": ((3, 32, 32), 32, 512),
    "resnet18-imagenet": ((3, 224, 224), 4, 128),
}
PROVIDERS = (
    "naive",
    "naive-autograd",
    "torchattacks",
    *peers.PEERS,
    "fastadv",
    "fastadv-early-stop",
    "fastadv-early-stop-k4",
    "fastadv-bf16-cl",
    "fastadv-bf16-cl-early-stop",
    "fastadv-bf16-cl-graph",
    "limit",
)
GPU_ONLY = ("fastadv-bf16-cl-graph",)
# the other libraries, against the fastest of which fastadv's speed is given
PEER_LIBRARIES = ("torchattacks", *peers.PEERS)
# attack kind -> the providers that run it
KINDS = {
    "pgd": PROVIDERS,
    "apgd": ("torchattacks", "fastadv", "fastadv-early-stop", "limit"),
    "cw": ("torchattacks", "fastadv", "limit"),
    "autoattack": ("torchattacks", "fastadv"),
}
# kind -> the steps when none are given (AutoAttack's standard version: 100 per stage)
DEFAULT_STEPS = {"pgd": 10, "apgd": 10, "cw": 10, "autoattack": 100}
# AutoAttack's default batch (cpu, cuda): one call of the whole cascade must stay affordable
AUTOATTACK_BATCH = (64, 1000)
# Square's queries per APGD/FAB step in the autoattack kind (the standard version: 5000 for 100)
SQUARE_QUERIES_PER_STEP = 50
# kind -> fastadv's side: the catalogue's entry (fastadv/attacks/catalog.py) and the settings the
# benchmark changes so that every provider runs the same attack (no random start; torchattacks'
# CW: c=1, kappa=0, lr=0.01, one round; AutoAttack at `steps` and 50 x steps queries)
FASTADV = {
    "pgd": ("pgd", {"random_start": False}),
    "apgd": ("apgd-ce", {"n_restarts": 1}),
    "cw": ("cw", {"c": 1, "kappa": 0, "lr": 0.01, "binary_search_steps": 1}),
    "autoattack": ("autoattack", {"version": "standard", "seed": 0, "log": None}),
}
EPS = {"digits-cnn": 0.1, "digits-cnn-fgsm-rs": 0.1, "resnet18-cifar": 8 / 255, "resnet18-imagenet": 4 / 255}


def available_providers(kind: str = "pgd", device: torch.device | None = None) -> list[str]:
    """The providers of `kind` that can run here (the peer libraries importable; a GPU for graphs)."""
    return [p for p in KINDS[kind] if unavailable_reason(p, device) is None]


def unavailable_reason(provider: str, device: torch.device | None = None) -> str | None:
    """Why `provider` cannot run here ("needs a CUDA GPU", "is not installed (pip install ...)",
    a peer's import error), or None."""
    if provider in GPU_ONLY and (device is None or device.type != "cuda"):
        return "needs a CUDA GPU"
    if provider == "torchattacks":
        try:
            import torchattacks  # noqa: F401
        except ImportError:
            return "needs torchattacks (pip install torchattacks)"
    if provider in peers.PEERS:
        return peers.unavailable_reason(provider)
    return None


@functools.lru_cache(maxsize=1)
def _digits_state() -> dict:
    return standard_digits_model().state_dict()


@functools.lru_cache(maxsize=1)
def _fgsm_rs_digits_state() -> dict:
    """small_cnn trained with FGSM-RS at eps 0.1 (the tests' robust digits model)."""
    return fgsm_rs_digits_model().state_dict()


def make_case(name: str, batch: int, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model in eval mode, images, labels) on `device`."""
    shape = MODELS[name][0]
    if name.startswith("digits-cnn"):
        model = small_cnn()
        model.load_state_dict(_digits_state() if name == "digits-cnn" else _fgsm_rs_digits_state())
        images, labels = digits("test")
        repeats = -(-batch // len(labels))
        images, labels = images.repeat(repeats, 1, 1, 1)[:batch], labels.repeat(repeats)[:batch]
        return model.eval().to(device), images.to(device), labels.to(device)
    torch.manual_seed(0)
    model = resnet18().eval().to(device)
    images = torch.rand(batch, *shape, device=device)
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


def naive_pgd(model, images, labels, eps: float, alpha: float, steps: int, input_only: bool = False) -> torch.Tensor:
    """input_only: torch.autograd.grad of the input instead of loss.backward(). No random start."""
    adv = images.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), labels)
        if input_only:
            (grad,) = torch.autograd.grad(loss, adv)
        else:
            model.zero_grad(set_to_none=True)
            loss.backward()
            grad = adv.grad
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, images - eps), images + eps).clamp(0, 1)
    return adv


def forward_backward_limit(model, images, labels, steps: int) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            x = images.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x), labels, reduction="sum"), x)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def provider_fn(
    provider: str, model, images, labels, eps: float, steps: int, kind: str = "pgd"
) -> Callable[[], object]:
    if provider not in KINDS[kind]:
        raise ValueError(f"provider {provider!r} does not run {kind} (choose from {', '.join(KINDS[kind])})")
    alpha = ATTACKS["pgd"].arguments(eps, steps)["alpha"]  # evaluate's step size: eps / 4
    if provider.startswith("naive"):
        return lambda: naive_pgd(model, images, labels, eps, alpha, steps, input_only=provider == "naive-autograd")
    if provider == "limit":
        return lambda: forward_backward_limit(model, images, labels, steps)
    if provider == "torchattacks":
        import torchattacks

        if kind == "autoattack":
            attack = torchattacks_autoattack(model, eps, steps)
            return lambda: attack(images, labels)
        if kind == "apgd":
            attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce")
        elif kind == "cw":
            attack = torchattacks.CW(model, c=1, kappa=0, steps=steps, lr=0.01)
        else:
            attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        return lambda: attack(images, labels)
    if provider in peers.PEERS:
        return peers.pgd(provider, model, images, labels, eps, alpha, steps)
    name, settings = FASTADV[kind]
    if kind == "autoattack":
        built = ATTACKS[name].build(model, eps, steps, steps=steps, n_queries=SQUARE_QUERIES_PER_STEP * steps,
                                    **settings)  # fmt: skip
        # one chunk, as torchattacks' MultiAttack takes the batch (and at least AutoAttack's bs=250,
        # the pairs APGD-T may batch)
        return lambda: built.attack.run_standard_evaluation(images, labels, bs=max(images.shape[0], 250))
    options = {"early_stop": "early-stop" in provider}
    if kind == "pgd":
        options["early_stop_every"] = 4 if provider.endswith("-k4") else 1
        if provider.endswith("graph"):
            options["cuda_graph"] = True
        if "bf16-cl" in provider:
            options.update(amp=torch.bfloat16, channels_last=images.dim() == 4)
    elif kind == "cw":
        options = {}  # (CW takes no early_stop: it has its own early abort)
    # no generator: the attacks' own seeding (APGD's seed 0; PGD without a random start draws nothing)
    attack = ATTACKS[name].build(model, eps, steps, **settings, **options)
    return lambda: attack(images, labels)


def torchattacks_autoattack(model, eps: float, steps: int):
    """torchattacks' standard AutoAttack cascade with the original's budgets: what
    torchattacks.AutoAttack(version="standard", seed=0) builds, but APGD, APGD-T and FAB at
    `steps` iterations (its default: 10) and Square at 50 x steps queries with the schedule not
    rescaled (its default rescales it), as fastadv.AutoAttack's stages run."""
    import torchattacks

    common = {"norm": "Linf", "eps": eps, "seed": 0}
    return torchattacks.MultiAttack([
        torchattacks.APGD(model, steps=steps, n_restarts=1, loss="ce", **common),
        torchattacks.APGDT(model, steps=steps, n_restarts=1, n_classes=10, **common),
        torchattacks.FAB(model, steps=steps, n_restarts=1, multi_targeted=True, n_classes=10, **common),
        torchattacks.Square(model, n_queries=SQUARE_QUERIES_PER_STEP * steps, n_restarts=1, p_init=0.8,
                            resc_schedule=False, **common),
    ])  # fmt: skip


def run(
    models: Iterable[str],
    providers: Iterable[str],
    device: torch.device,
    *,
    kind: str = "pgd",
    batch: int | None = None,
    steps: int | None = None,
    warmup: int = 1,
    repeat: int = 5,
    progress: bool = True,
) -> list[Row]:
    """time (ms per attack call), images/s, the robust accuracy the attack leaves (%, from its
    last call's images), and speed-ups over naive, torchattacks, the fastest peer library and the
    limit. steps: None for the kind's default (DEFAULT_STEPS); batch: None for the model's
    default (the autoattack kind: AUTOATTACK_BATCH at most)."""
    from tqdm import tqdm

    models, providers = list(models), list(providers)
    steps = steps or DEFAULT_STEPS[kind]
    env = environment(device)
    rows: list[Row] = []
    bar = tqdm(total=len(models) * len(providers), desc=f"bench {kind}", disable=not progress, unit="run")
    for name in models:
        size = batch or MODELS[name][1 if device.type == "cpu" else 2]
        if batch is None and kind == "autoattack":
            size = min(size, AUTOATTACK_BATCH[device.type != "cpu"])
        model, images, labels = make_case(name, size, device)
        outputs: dict[str, object] = {}
        fns = {p: _keeping_output(provider_fn(p, model, images, labels, EPS[name], steps, kind), outputs, p)
               for p in providers}  # fmt: skip
        for provider, fn in fns.items():
            bar.set_postfix_str(f"{name} {provider} warm-up")
            measure(fn, device, warmup, 1)
            bar.update()
        # Providers take turns, so that a slow spell of a shared machine hits them alike.
        samples: dict[str, list[float]] = {p: [] for p in providers}
        for round_ in range(repeat):
            bar.set_postfix_str(f"{name} round {round_ + 1}/{repeat}")
            for provider, fn in fns.items():
                samples[provider] += measure(fn, device, 0, 1)
        seconds = {p: quantiles(s) for p, s in samples.items()}

        def add(provider, metric, unit, values, name=name, size=size):
            dtype = "bf16-cl" if "bf16-cl" in provider else "float32"
            rows.append(Row(**env, kernel=f"{kind}{steps}", provider=provider, dtype=dtype, size=name, numel=size,
                            metric=metric, unit=unit, median=values[0], p20=values[1], p80=values[2]))  # fmt: skip

        peer_times = [seconds[p][0] for p in PEER_LIBRARIES if p in seconds]
        for provider, (med, p20, p80) in seconds.items():
            add(provider, "time", "ms", (med * 1e3, p20 * 1e3, p80 * 1e3))
            add(provider, "images_per_s", "img/s", (size / med, size / p80, size / p20))
            robust = _robust_accuracy(model, outputs.get(provider), labels)
            if robust is not None:
                add(provider, "robust_accuracy", "%", (robust, robust, robust))
            for baseline in ("naive", "torchattacks", "limit"):
                if baseline in seconds and baseline != provider:
                    ratio = seconds[baseline][0] / med
                    add(provider, f"speedup_vs_{baseline}", "x", (ratio, ratio, ratio))
            if peer_times and provider not in PEER_LIBRARIES:
                ratio = min(peer_times) / med
                add(provider, "speedup_vs_fastest_peer", "x", (ratio, ratio, ratio))
    bar.close()
    return rows


def _keeping_output(fn: Callable[[], object], outputs: dict[str, object], provider: str) -> Callable[[], None]:
    """`fn` that keeps its latest result in outputs[provider] (the robust accuracy is taken from
    it after the timed rounds, so it costs no call of its own)."""

    def call() -> None:
        outputs[provider] = fn()

    return call


def _robust_accuracy(model, adv: object, labels: torch.Tensor) -> float | None:
    """% of `adv` the model still classifies as `labels` (None when the provider returns no images)."""
    if not isinstance(adv, torch.Tensor):
        return None
    with torch.no_grad():
        return float((model(adv.to(labels.device)).argmax(1) == labels).float().mean()) * 100


def format_table(rows: list[Row]) -> str:
    by_key = medians_by_case(rows)
    columns = (
        ("attack", 13),
        ("model", 18),
        ("batch", 6),
        ("provider", 27),
        ("ms", 10),
        ("img/s", 9),
        ("robust %", 8),
        ("vs naive", 9),
        ("vs ta", 7),
        ("vs peer", 7),
    )
    lines = [" ".join(f"{name:>{width}}" for name, width in (*columns, ("vs limit", 9)))]
    for (kernel, model, batch, provider), m in by_key.items():

        def ratio(key, m=m):
            return f"{m[key]:.2f}x" if key in m else "-"

        robust = f"{m['robust_accuracy']:.1f}" if "robust_accuracy" in m else "-"
        lines.append(
            f"{kernel:>13} {model:>18} {batch:>6} {provider:>27} {m['time']:>10.1f} {m['images_per_s']:>9.1f} "
            f"{robust:>8} {ratio('speedup_vs_naive'):>9} {ratio('speedup_vs_torchattacks'):>7} "
            f"{ratio('speedup_vs_fastest_peer'):>7} {ratio('speedup_vs_limit'):>9}"
        )
    return "\n".join(lines)
