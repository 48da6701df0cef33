"""The peer libraries in `fastadv bench --attack` (fastadv/bench/peers.py): each peer's PGD is the
same attack as fastadv's (no random start, same eps, step and steps), a peer that cannot be
imported is reported with the reason, and the table gives the robust accuracy each provider
reached. torchattacks is installed in the development environment, so its test always runs;
the others skip, naming why, where they do not import."""

import csv
import sys

import pytest
import torch

import fastadv
from fastadv.bench import attack, peers
from fastadv.cli import main

PEERS = ["torchattacks", *peers.PEERS]


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:32], y[:32]


@pytest.mark.parametrize("provider", PEERS)
def test_a_peer_runs_the_same_pgd_as_fastadv(digits, provider):
    reason = attack.unavailable_reason(provider)
    if reason is not None:
        assert provider != "torchattacks", "torchattacks is a development dependency: its provider must run"
        pytest.skip(f"{provider} {reason}")
    model, x, y = digits
    theirs = attack.provider_fn(provider, model, x, y, eps=0.1, steps=3)()
    ours = fastadv.PGD(model, eps=0.1, alpha=0.025, steps=3, random_start=False)(x, y)
    assert isinstance(theirs, torch.Tensor) and theirs.shape == x.shape and theirs.device == x.device
    # sign steps of the same gradient: equal but where a gradient entry is ~0 (mean vs sum loss)
    same = (theirs - ours).abs() <= 1e-6
    assert float(same.float().mean()) > 0.99
    assert float((theirs - x).abs().max()) <= 0.1 + 1e-6 and bool((theirs >= 0).all() and (theirs <= 1).all())
    with torch.no_grad():
        agree = model(theirs).argmax(1) == model(ours).argmax(1)
    assert int((~agree).sum()) <= 1


def test_a_peer_that_does_not_import_is_reported_with_its_error(tmp_path, monkeypatch):
    (tmp_path / "broken_peer_lib.py").write_text("raise ImportError('needs an older torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(peers.PEERS, "broken", ("broken_peer_lib", "pip install broken"))
    monkeypatch.setitem(peers.PEERS, "absent", ("no_such_peer_lib.attacks", "pip install absent"))
    peers.unavailable_reason.cache_clear()
    try:
        assert peers.unavailable_reason("absent") == "is not installed (pip install absent)"
        reason = peers.unavailable_reason("broken")
        assert reason.startswith(f"does not import with torch {torch.__version__}: ImportError: needs an older torch")
    finally:
        peers.unavailable_reason.cache_clear()
        sys.modules.pop("broken_peer_lib", None)


def test_advertorch_says_why_it_cannot_run():
    reason = attack.unavailable_reason("advertorch")
    if reason is None:
        pytest.skip("advertorch imports here")
    assert "advertorch" not in attack.available_providers("pgd")
    with pytest.raises(SystemExit) as exit_info:
        if main(["bench", "--attack", "--providers", "advertorch", "--device", "cpu"]) == 2:
            raise SystemExit(2)
    assert exit_info.value.code == 2


@pytest.mark.slow  # every provider, and the bench's own digits model
def test_bench_lists_the_robust_accuracy_and_the_missing_peers(tmp_path, capsys):
    out = tmp_path / "attack.csv"
    argv = ["bench", "--attack", "--models", "digits-cnn", "--batch", "8", "--steps", "2", "--device", "cpu",
            "--warmup", "1", "--repeat", "1", "--csv", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    robust = {r["provider"]: float(r["median"]) for r in rows if r["metric"] == "robust_accuracy"}
    available = attack.available_providers("pgd", torch.device("cpu"))
    assert set(robust) == set(available) - {"limit"}, "every provider that returns images"
    float32 = {p: v for p, v in robust.items() if "bf16" not in p}
    assert len(set(float32.values())) == 1, f"the same deterministic attack reaches one accuracy: {float32}"
    fastest_peer = [r for r in rows if r["metric"] == "speedup_vs_fastest_peer" and r["provider"] == "fastadv"]
    assert len(fastest_peer) == 1 and float(fastest_peer[0]["median"]) > 0
    text = capsys.readouterr().out
    assert "robust %" in text and "vs peer" in text
    for peer in PEERS:
        reason = attack.unavailable_reason(peer)
        assert (f"missing: {peer} {reason}" in text) == (reason is not None)
