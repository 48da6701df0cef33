"""A `module:callable` factory without weights builds a model with random weights: refused
unless allowed (CLI `--allow-random-weights`, Python `allow_random_weights=True`), then a
warning, and the initialisation is seeded (`--seed`, `seed=`), so two runs agree
(random weights were evaluated silently and two `--seed 0` runs differed). A weights-only file
given as the model gets the fix in each front end's own terms."""

import json

import numpy as np
import pytest
import torch

from fastadv import models
from fastadv.__main__ import main

SPEC = "fastadv.models:small_cnn"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("random")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    np.savez(root / "data.npz", x=x.numpy(), y=y.numpy())
    return root


def _eval(data, out, *more):
    return main(["eval", "--model", SPEC, "--data", str(data / "data.npz"), "--attacks", "fgsm", "--eps", "0.1",
                 "--workers", "0", "--quiet", "--no-plots", "--out", str(out), *more])  # fmt: skip


def test_cli_refuses_random_weights_without_the_flag(data, tmp_path, capsys):
    assert _eval(data, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fastadv eval: error: --model: {SPEC}: no --weights given, so the model would have random "
                   "weights: give --weights FILE (its state_dict), or --allow-random-weights to evaluate random "
                   "weights anyway")  # fmt: skip


def test_cli_random_weights_warned_and_seeded(data, tmp_path, capsys):
    reports = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert _eval(data, tmp_path / name, "--allow-random-weights", "--seed", seed) == 0
        err = capsys.readouterr().err
        assert f"warning: {SPEC}: random weights (no weights given; initialised with seed {seed})" in err
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    strip = ("timestamp", "attacks", "worst_case", "data_loading", "seed", "settings")
    same = [{k: v for k, v in r.items() if k not in strip} for r in reports]
    assert same[0] == same[1]
    robust = [[a["robust_accuracy"] for a in r["attacks"]] for r in reports]
    assert robust[0] == robust[1]


def test_cli_allow_random_weights_only_with_a_factory_without_weights(data, tmp_path, capsys):
    assert main(["eval", "--allow-random-weights", "--data", str(data / "data.npz"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2  # fmt: skip
    assert "--allow-random-weights: goes with --model" in capsys.readouterr().err


def test_python_load_refuses_random_weights_unless_allowed():
    with pytest.raises(models.MissingWeights, match=f"{SPEC}: no weights given, so the model would have random"):
        models.load(SPEC)
    assert issubclass(models.MissingWeights, models.ModelError)
    with pytest.warns(models.RandomWeightsWarning, match="initialised with seed 3"):
        models.load(SPEC, allow_random_weights=True, seed=3)


def test_python_load_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(models.RandomWeightsWarning):
        a = models.load(SPEC, allow_random_weights=True, seed=5)
        b = models.load(SPEC, allow_random_weights=True, seed=5)
        c = models.load(SPEC, allow_random_weights=True, seed=6)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream did not move
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), c.state_dict().values(), strict=True))
    assert all(torch.equal(x, y) for x, y, _ in pairs)
    assert not all(torch.equal(x, z) for x, _, z in pairs)


def test_safetensors_as_the_model_says_how_in_each_front_end(data, tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    path = tmp_path / "r.safetensors"
    save_file(models.small_cnn().state_dict(), str(path))
    assert main(["eval", "--model", str(path), "--data", str(data / "data.npz"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"give its architecture too, --model module:callable --weights {path}"), err
    assert "load(" not in err
    with pytest.raises(models.WeightsWithoutModel, match=r"load\('module:callable', weights="):
        models.load(path)
