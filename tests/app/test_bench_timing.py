"""fastadv.bench.timing.interleaved: every provider gets its samples, in an order that changes from
round to round (in a fixed order the provider after torch.compile always met cold caches)."""

from fastadv.bench.timing import interleaved


def _recording(calls):
    return {name: (lambda name=name: calls.append(name)) for name in ("compile", "fused", "copy", "eager")}


def test_interleaved_gives_each_provider_its_rounds_in_changing_orders():
    calls: list[str] = []
    seconds = interleaved(_recording(calls), rounds=30, warmup=2)
    assert {name: len(s) for name, s in seconds.items()} == {"compile": 30, "fused": 30, "copy": 30, "eager": 30}
    assert all(t >= 0 for s in seconds.values() for t in s)
    rounds = [tuple(calls[i : i + 4]) for i in range(0, len(calls), 4)]
    assert len(rounds) == 32 and all(sorted(r) == ["compile", "copy", "eager", "fused"] for r in rounds)
    after_compile = {r[r.index("compile") + 1] for r in rounds if r.index("compile") < 3}
    assert after_compile == {"fused", "copy", "eager"}, "each provider must sometimes follow compile"
    assert len(set(rounds)) > 5


def test_interleaved_order_is_reproducible_from_its_seed():
    first: list[str] = []
    second: list[str] = []
    other: list[str] = []
    interleaved(_recording(first), rounds=10, seed=3)
    interleaved(_recording(second), rounds=10, seed=3)
    interleaved(_recording(other), rounds=10, seed=4)
    assert first == second and first != other
