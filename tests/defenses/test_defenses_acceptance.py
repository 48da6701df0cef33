"""The acceptance numbers of the defences, on the digits test split at eps 0.1 with PGD-20: each
defence looks robust to the non-adaptive attack and is not to the adaptive one. The models this
needs (a distillation teacher and student at T = 100, three ensemble members) are trained once and
cached in .pytest_cache/fastadv, keyed by the code that determines them. benchmarks/defenses.py
prints the same comparison as the README's table."""

import hashlib
import os
from pathlib import Path

import pytest
import torch

import fastadv
from fastadv import models
from fastadv.data import digits
from fastadv.defenses import JPEG, BitDepth, Defended, Ensemble, RandomResizePad
from fastadv.digits_models import train_standard
from fastadv.evaluation import evaluate
from fastadv.recipes import Recipe
from fastadv.train import fit

pytestmark = pytest.mark.slow

EPS, STEPS, T = 0.1, 20, 100.0
DISTILL = {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0,
           "schedule": "constant", "progress": False}  # fmt: skip
_REPO = Path(__file__).resolve().parents[2]


def _cache_dir() -> Path:
    key = hashlib.sha256(torch.__version__.encode())
    for name in (
        "models/architectures.py",
        "data/opening.py",
        "digits_models.py",
        "recipes.py",
        "train.py",
        "defenses/distill.py",
    ):
        key.update((_REPO / "fastadv" / name).read_bytes())
    return _REPO / ".pytest_cache" / "fastadv" / f"defenses-{key.hexdigest()[:16]}"


def _cached(name: str, train) -> torch.nn.Module:
    path = _cache_dir() / f"{name}.pt"
    model = models.small_cnn()
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    except (OSError, RuntimeError, EOFError):
        pass
    model = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return model.eval()


def _teacher():
    torch.manual_seed(10)
    model = models.small_cnn()
    fit(model, digits("train"), recipe=Recipe("distill", temperature=T), **DISTILL)
    return model


def _student():
    teacher = _cached("teacher", _teacher)
    torch.manual_seed(11)
    model = models.small_cnn()
    fit(model, digits("train"), recipe=Recipe("distill", temperature=T, teacher=teacher), **DISTILL)
    return model


def _member(seed):
    def train():
        torch.manual_seed(seed)
        return train_standard(models.small_cnn(), *digits("train"), epochs=15, seed=seed)

    return train


def _report(model, data, **options):
    report = evaluate(model, data, ["pgd"], [EPS], steps=STEPS, progress=False, adaptive=True, **options)
    (row,) = report["comparison"]
    return row


@pytest.fixture(scope="module")
def undefended(digits_model):
    model, x, y = digits_model
    return _report(model, (x, y))


def test_the_undefended_model_shows_no_masking(undefended):
    assert undefended["clean_accuracy"] > 0.95 and undefended["robust_accuracy"] < 0.4
    assert not undefended["gradient_masking_suspected"]


def test_distillation_at_t100_fools_cross_entropy_pgd_but_not_the_margin_loss(digits_model, undefended):
    _, x, y = digits_model
    student = _cached("student", _student)
    row = _report(student, (x, y))
    assert row["clean_accuracy"] > 0.85
    # cross-entropy PGD: the saturated softmax hides the gradient
    assert row["robust_accuracy"] > undefended["robust_accuracy"] + 0.4, row
    # the margin loss on the logits: within 10 points of the undefended model
    assert abs(row["adaptive_robust_accuracy"] - undefended["robust_accuracy"]) <= 0.10, (row, undefended)
    assert row["gradient_masking_suspected"]
    # the margin-loss PGD alone does it (the adaptive cascade's second stage finds the samples)
    margin = fastadv.PGD(student, eps=EPS, alpha=EPS / 4, steps=STEPS, loss="margin",
                         generator=torch.Generator().manual_seed(0)).run(x, y)  # fmt: skip
    assert float((margin.predicted == y).float().mean()) <= undefended["robust_accuracy"] + 0.10


@pytest.mark.parametrize("transforms", [[BitDepth(5)], [JPEG(75)], [JPEG(75), BitDepth(5)]],
                         ids=["bits5", "jpeg75", "jpeg75-bits5"])  # fmt: skip
def test_quantizing_transforms_inflate_plain_pgd_and_bpda_undoes_it(digits_model, undefended, transforms):
    model, x, y = digits_model
    row = _report(Defended(model, transforms), (x, y))
    assert row["robust_accuracy"] > undefended["robust_accuracy"] + 0.4, row
    assert abs(row["adaptive_robust_accuracy"] - undefended["robust_accuracy"]) <= 0.10, (row, undefended)
    assert row["gradient_masking_suspected"] and "the adaptive attacks (BPDA" in row["reason"]


def test_random_resize_pad_eot_pgd_is_stronger_than_pgd_without_eot(digits_model):
    model, x, y = digits_model
    defended = Defended(model, [RandomResizePad(0.9, generator=torch.Generator().manual_seed(0))])
    # (half the split and 5 draws: EOT multiplies the attack's cost; the README's table has all)
    data = (x[:180], y[:180])
    report = evaluate(defended, data, ["pgd"], [EPS], steps=STEPS, progress=False, adaptive=True, eot_samples=5)
    # the first stage of each run: PGD without EOT, and the same PGD with the gradient of 10 draws
    plain, eot = report["attacks"][0], report["adaptive"]["attacks"][0]
    assert plain["attack"] == eot["attack"] == "pgd"
    assert eot["robust_accuracy"] < plain["robust_accuracy"], (plain, eot)


def test_ensemble_white_box_transfer_and_members(digits_model):
    _, x, y = digits_model
    members = [_cached(f"member{seed}", _member(seed)) for seed in (1, 2, 3)]
    ensemble = Ensemble(members)

    def robust(target, source):
        adv = fastadv.PGD(source, eps=EPS, alpha=EPS / 4, steps=STEPS, generator=torch.Generator().manual_seed(0))(x, y)
        with torch.no_grad():
            return float((target(adv).argmax(1) == y).float().mean())

    table = {
        "white-box on the ensemble": robust(ensemble, ensemble),
        "transfer from member 1": robust(ensemble, members[0]),
        **{f"member {i} alone": robust(m, m) for i, m in enumerate(members, 1)},
    }
    print(table)
    with torch.no_grad():
        assert float((ensemble(x).argmax(1) == y).float().mean()) > 0.95
    # white-box gradients through every member find more than a transferred attack does
    assert table["white-box on the ensemble"] < table["transfer from member 1"], table
    # and the ensemble is about as (un)robust as its members: averaging is no defence
    assert table["white-box on the ensemble"] < 0.4 and max(table[f"member {i} alone"] for i in (1, 2, 3)) < 0.4
