"""The peer libraries in `fastadv bench --attack` (fastadv/bench/peers.py): each peer's PGD is the
same attack as fastadv's (no random start, same eps, step and steps), a peer that cannot be
imported is reported with the reason, and the table gives the robust accuracy each provider
reached. The README's set-up installs every peer (requirements-peers.txt), so in CI
(FASTADV_EXPECT_PEERS=1, set by .ci/run) ART and Foolbox must run and advertorch must be
installed and report why it cannot import; elsewhere a peer that does not import skips, naming
why. torchattacks is a development dependency: its test always runs."""

import csv
import os
import sys

import pytest
import torch

import fastadv
from fastadv.__main__ import main
from fastadv.bench import attack, peers

PEERS = ["torchattacks", *peers.PEERS]
EXPECT_PEERS = os.environ.get("FASTADV_EXPECT_PEERS") == "1"


@pytest.fixture(scope="module")
def digits(digits_model):
    model, x, y = digits_model
    return model, x[:32], y[:32]


@pytest.mark.parametrize("provider", PEERS)
def test_a_peer_runs_the_same_pgd_as_fastadv(digits, provider):
    reason = attack.unavailable_reason(provider)
    if reason is not None:
        assert provider != "torchattacks", "torchattacks is a development dependency: its provider must run"
        assert not (EXPECT_PEERS and provider != "advertorch"), f"{provider} {reason} (requirements-peers.txt)"
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
    assert not (EXPECT_PEERS and reason.startswith("is not installed")), f"advertorch {reason}"
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


# ---- AutoAttack: fastadv against torchattacks at the original's budgets ----


def test_torchattacks_autoattack_gets_the_originals_budgets(digits):
    """The torchattacks side of the autoattack kind runs every stage at fastadv's standard
    version's budget (torchattacks.AutoAttack's own: 10 steps, a rescaled Square schedule)."""
    model = digits[0]
    theirs = attack.torchattacks_autoattack(model, eps=0.1, steps=100).attacks
    ours = dict(fastadv.AutoAttack(model, eps=0.1, version="standard").stages)
    assert [type(a).__name__ for a in theirs] == ["APGD", "APGDT", "FAB", "Square"]
    apgd, apgdt, fab, square = theirs
    assert (apgd.steps, apgd.n_restarts, apgd.loss) == (ours["apgd-ce"].steps, ours["apgd-ce"].n_restarts, "ce") == (
        100, 1, "ce")  # fmt: skip
    assert (apgdt.steps, apgdt.n_restarts, apgdt.n_target_classes) == (100, 1, ours["apgd-t"].n_target_classes) == (
        100, 1, 9)  # fmt: skip
    assert (fab.steps, fab.n_restarts, fab.multi_targeted, fab.n_target_classes) == (100, 1, True, 9)
    assert (ours["fab-t"].steps, ours["fab-t"].n_restarts, ours["fab-t"].n_classes - 1) == (100, 1, 9)
    assert (square.n_queries, square.n_restarts, square.p_init, square.rescale_schedule) == (
        ours["square"].n_queries, ours["square"].n_restarts, ours["square"].p_init, ours["square"].resc_schedule,
    ) == (5000, 1, 0.8, False)  # fmt: skip
    assert all(a.eps == 0.1 and a.norm == "Linf" for a in theirs)


def test_the_autoattack_kind_gives_both_providers_robust_accuracy_and_ratios(digits, monkeypatch):
    model = digits[0]
    monkeypatch.setattr(attack, "_digits_state", lambda: model.state_dict())  # (the bench would train its own)
    assert attack.available_providers("autoattack") == ["torchattacks", "fastadv"]
    rows = attack.run(["digits-cnn"], ["torchattacks", "fastadv"], torch.device("cpu"), kind="autoattack", batch=8,
                      steps=2, warmup=1, repeat=1, progress=False)  # fmt: skip
    by = {(r.provider, r.metric): r for r in rows}
    assert {r.kernel for r in rows} == {"autoattack2"} and {r.numel for r in rows} == {8}
    robust = {p: by[p, "robust_accuracy"].median for p in ("torchattacks", "fastadv")}
    assert all(0 <= v <= 100 for v in robust.values())
    with torch.no_grad():
        clean = float((model(digits[1][:8]).argmax(1) == digits[2][:8]).float().mean()) * 100
    assert all(v <= clean for v in robust.values()), "an attack never raises the accuracy"
    for metric in ("speedup_vs_torchattacks", "speedup_vs_fastest_peer"):
        assert by["fastadv", metric].median > 0 and ("torchattacks", metric) not in by
    assert by["fastadv", "time"].median > 0 and by["torchattacks", "time"].median > 0
    assert "autoattack2" in attack.format_table(rows)
