"""Adversarial training: recipes, fit, checkpoints (atomic, resumable after SIGKILL), model files,
and the acceptance run on digits."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from support.model_state import assert_unchanged, snapshot

import fastadv
from fastadv import checkpoint, models
from fastadv.data import digits
from fastadv.recipes import Recipe, adversarial_batch, free_replays, trades_attack
from fastadv.train import fit


def _small_data(n=256):
    x, y = digits("train")
    return x[:n], y[:n]


@pytest.mark.slow
def test_fgsm_rs_training_reaches_robustness_on_digits():
    """Acceptance: FGSM-RS (Wong et al.) at eps 0.1 keeps >= 95% clean accuracy and >= 60%
    under PGD-20, where the standard model has <= 30% (test_attack_strength)."""
    torch.manual_seed(0)
    model = models.small_cnn()
    history = fit(model, digits("train"), recipe=Recipe("fgsm-rs", eps=0.1), epochs=15, batch_size=64,
                  optimizer="adam", lr=2e-3, weight_decay=0.0, val_data=digits("test"), val_steps=5,
                  progress=False)  # fmt: skip
    x, y = digits("test")
    result = fastadv.PGD(model, eps=0.1, alpha=0.0125, steps=20, generator=torch.Generator().manual_seed(1)).run(x, y)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert clean >= 0.95 and 1 - result.success_rate >= 0.60, (clean, 1 - result.success_rate)
    assert len(history) == 15 and history[-1]["robust_accuracy"] >= 0.6 and history[-1]["clean_accuracy"] >= 0.95


@pytest.mark.parametrize("name", ["pgd", "fgsm-rs", "trades"])
def test_adversarial_batch_stays_in_the_ball_and_leaves_the_model_alone(name):
    torch.manual_seed(0)
    model = models.small_cnn(width=8).train()
    x, y = _small_data(32)
    before = snapshot(model)
    recipe = Recipe(name, eps=0.1, steps=3, clean_fraction=0.25)
    adv = adversarial_batch(model, x, y, recipe, generator=torch.Generator().manual_seed(0))
    assert_unchanged(model, before)
    assert adv.shape == x.shape and torch.equal(adv[:8], x[:8]), "the clean share is the first 25%"
    distance = (adv[8:] - x[8:]).abs().amax()
    assert 0 < distance <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_standard_and_free_recipes_in_adversarial_batch():
    model = models.small_cnn(width=8)
    x, y = _small_data(8)
    assert adversarial_batch(model, x, y, Recipe("standard")) is x
    with pytest.raises(ValueError, match="free"):
        adversarial_batch(model, x, y, Recipe("free"))


def test_trades_attack_increases_the_kl():
    torch.manual_seed(0)
    model = models.small_cnn(width=8).eval()
    x, _ = _small_data(32)
    adv = trades_attack(model, x, Recipe("trades", eps=0.1, steps=5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        kl = torch.nn.functional.kl_div(torch.log_softmax(model(adv), 1), p, reduction="sum")
        start = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        kl_start = torch.nn.functional.kl_div(torch.log_softmax(model(start.clamp(0, 1)), 1), p, reduction="sum")
    assert kl > 10 * kl_start


def test_free_replays_update_weights_and_carry_the_perturbation():
    torch.manual_seed(0)
    model = models.small_cnn(width=8).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _small_data(16)
    weights = [p.detach().clone() for p in model.parameters()]
    recipe = Recipe("free", eps=0.1, replays=3)
    delta, loss_sum, correct = free_replays(model, opt, x, y, None, recipe)
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert 0 < delta.abs().max() <= 0.1 + 1e-6 and loss_sum > 0 and 0 <= correct <= 48
    delta2, _, _ = free_replays(model, opt, x, y, delta, recipe)
    assert not torch.equal(delta, delta2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["standard", "pgd", "fgsm-rs", "free", "trades"])
def test_fit_every_recipe(name, tmp_path):
    torch.manual_seed(0)
    model = models.small_cnn(width=8)
    history = fit(model, _small_data(128), recipe=Recipe(name, eps=0.1, steps=2, replays=2), epochs=2,
                  batch_size=64, val_data=_small_data(32), checkpoint_dir=str(tmp_path), progress=False)  # fmt: skip
    assert [h["epoch"] for h in history] == [1, 2] and not model.training
    assert all(0 <= h["robust_accuracy"] <= h["clean_accuracy"] <= 1 for h in history)
    loaded = models.load(str(tmp_path / "model.pt"))
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


_RUN = """
import sys, time, torch
from fastadv import models
from fastadv.data import digits
from fastadv.recipes import Recipe
from fastadv.train import fit
torch.manual_seed(0)
torch.set_num_threads(1)
x, y = digits("train")
model = models.small_cnn(width=8)
forward = model.forward
model.forward = lambda x: (time.sleep(0.005), forward(x))[1]  # epochs of ~0.5 s: time to kill one mid-run
fit(model, (x[:384], y[:384]), recipe=Recipe("pgd", eps=0.1, steps=3), epochs=5, batch_size=32, lr=0.05,
    checkpoint_dir=sys.argv[1], resume=True, deterministic=True, progress=False)
"""


def _latest_epoch(folder):
    path = os.path.join(folder, "latest.pt")
    return checkpoint.load(path, "training")["epoch"] if os.path.exists(path) else -1


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_same_weights(tmp_path):
    killed, straight = str(tmp_path / "killed"), str(tmp_path / "straight")
    process = subprocess.Popen([sys.executable, "-c", _RUN, killed])
    deadline = time.time() + 240
    while _latest_epoch(killed) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    # into the third epoch
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 1 <= _latest_epoch(killed) < 4, "killed mid-run: the last epoch's checkpoint must be missing"
    subprocess.run([sys.executable, "-c", _RUN, killed], check=True)  # resumes
    subprocess.run([sys.executable, "-c", _RUN, straight], check=True)
    resumed, uninterrupted = models.load(f"{killed}/model.pt"), models.load(f"{straight}/model.pt")
    for (name, a), b in zip(resumed.state_dict().items(), uninterrupted.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming"
    history = checkpoint.load(f"{killed}/latest.pt", "training")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pt")
    checkpoint.save_atomic({"kind": "training", "epoch": 0}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"kind": "training", "epoch": 1}, path)
    monkeypatch.undo()
    assert checkpoint.load(path, "training")["epoch"] == 0
    assert os.listdir(tmp_path) == ["latest.pt"], "the temporary file must be removed"


def test_resume_with_other_settings_and_bad_files(tmp_path):
    model = models.small_cnn(width=8)
    fit(model, _small_data(64), recipe=Recipe("standard"), epochs=1, batch_size=32, checkpoint_dir=str(tmp_path),
        progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="epochs"):
        fit(model, _small_data(64), recipe=Recipe("standard"), epochs=2, batch_size=32,
            checkpoint_dir=str(tmp_path), resume=True, progress=False)  # fmt: skip
    (tmp_path / "latest.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="latest.pt"):
        fit(model, _small_data(64), recipe=Recipe("standard"), epochs=1, batch_size=32,
            checkpoint_dir=str(tmp_path), resume=True, progress=False)  # fmt: skip
    checkpoint.save_atomic({"kind": "training", "epoch": 0}, str(tmp_path / "training.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="expected a fastadv model"):
        models.load(str(tmp_path / "training.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="no such file"):
        models.load(str(tmp_path / "missing.pt"))


def test_resume_refuses_another_architecture_or_data(tmp_path):
    args = dict(recipe=Recipe("standard"), epochs=1, batch_size=32, checkpoint_dir=str(tmp_path), progress=False)
    fit(models.small_cnn(width=8), _small_data(64), **args)
    with pytest.raises(ValueError, match=r"resume: .*another run \(changed: model\)"):
        fit(models.small_cnn(width=4), _small_data(64), resume=True, **args)
    x, y = _small_data(64)
    with pytest.raises(ValueError, match=r"\(changed: data\)"):
        fit(models.small_cnn(width=8), (x.flip(0), y.flip(0)), resume=True, **args)
    fit(models.small_cnn(width=8), _small_data(64), resume=True, **args)  # the same run: nothing left to do


def test_resume_refuses_another_start(tmp_path):
    """run_identity (fastadv train's --init weights) must be unchanged on resume."""
    args = dict(recipe=Recipe("standard"), epochs=1, batch_size=32, checkpoint_dir=str(tmp_path), progress=False)
    fit(models.small_cnn(width=8), _small_data(64), run_identity={"init": "weights A"}, **args)
    with pytest.raises(ValueError, match=r"another run \(changed: init\)"):
        fit(models.small_cnn(width=8), _small_data(64), resume=True, run_identity={"init": "weights B"}, **args)
    fit(models.small_cnn(width=8), _small_data(64), resume=True, run_identity={"init": "weights A"}, **args)


@pytest.mark.parametrize(
    "kwargs, error, part",
    [
        ({"recipe": "pgd"}, TypeError, "recipe"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"optimizer": "lbfgs"}, ValueError, "optimizer"),
        ({"schedule": "cosine"}, ValueError, "schedule"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": float("inf")}, ValueError, "lr"),
        ({"weight_decay": float("inf")}, ValueError, "weight_decay"),
        ({"momentum": float("nan")}, ValueError, "momentum"),
        ({"resume": True}, ValueError, "resume"),
        ({"train_data": (torch.rand(4, 1, 16, 16) * 2, torch.zeros(4, dtype=torch.long))}, ValueError, "train_data"),
        ({"train_data": (torch.rand(4, 1, 16, 16), torch.zeros(3, dtype=torch.long))}, ValueError, "train_data"),
        ({"amp": "fp64"}, ValueError, "amp"),
    ],
)
def test_fit_bad_arguments(kwargs, error, part):
    model = models.small_cnn(width=8)
    before = snapshot(model)
    data = kwargs.pop("train_data", _small_data(8))
    with pytest.raises(error, match=part):
        fit(model, data, progress=False, **kwargs)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "kwargs, part",
    [
        ({"name": "mart"}, "recipe"),
        ({"eps": -1}, "eps"),
        ({"steps": 0}, "steps"),
        ({"clean_fraction": 2}, "clean"),
        ({"eps": float("nan")}, "eps"),
        ({"beta": float("inf")}, "beta"),
        ({"alpha": float("inf")}, "alpha"),
    ],
)
def test_bad_recipes(kwargs, part):
    with pytest.raises(ValueError, match=part):
        Recipe(**kwargs)


@pytest.mark.parametrize("recipe", [Recipe("standard"), Recipe("free", eps=0.1, replays=2)])
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(recipe, tmp_path):
    torch.manual_seed(0)
    model, calls = models.small_cnn(width=8), []

    def nan_from_the_second_epoch(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) > 2 * (recipe.replays if recipe.name == "free" else 1) else output

    model.register_forward_hook(nan_from_the_second_epoch)
    with pytest.raises(
        ValueError, match=r"training stopped: the loss became nan in epoch 2, batch 1; .*latest.pt keeps"
    ):
        fit(model, _small_data(64), recipe=recipe, epochs=3, batch_size=32, lr=0.01, checkpoint_dir=str(tmp_path),
            progress=False)  # fmt: skip
    kept = checkpoint.load(str(tmp_path / "latest.pt"), "training")
    assert kept["epoch"] == 0 and all(bool(torch.isfinite(t).all()) for t in kept["model"].values())
    assert not (tmp_path / "model.pt").exists()


def test_model_files_need_fastadv_models(tmp_path):
    with pytest.raises(ValueError, match="model"):
        models.save(torch.nn.Linear(2, 2), str(tmp_path / "m.pt"))


def test_fit_with_bf16_autocast_and_channels_last():
    torch.manual_seed(0)
    model = models.small_cnn(width=8)
    dtypes = set()
    hook = model[0].register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    history = fit(model, _small_data(128), recipe=Recipe("pgd", eps=0.1, steps=2), epochs=1, batch_size=64,
                  amp=torch.bfloat16, channels_last=True, val_data=_small_data(32), progress=False)  # fmt: skip
    hook.remove()
    assert torch.bfloat16 in dtypes and history[0]["train_loss"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
