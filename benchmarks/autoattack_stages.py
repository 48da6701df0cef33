"""AutoAttack's stages one by one: fastadv's against torchattacks' at the same budget, on the
samples each stage attacks in the cascade (those the earlier stages left robust), the providers
taking turns round by round. APGD-T is also run one target class at a time (APGDT without
target_batch), as AutoAttack ran it before its target classes went side by side.

    OMP_NUM_THREADS=1 python benchmarks/autoattack_stages.py --model digits-cnn --batch 128 --rounds 2

Prints one line per stage: the median seconds of each provider and how many samples it fooled.
"""

import argparse
import statistics
import time

import torch

from fastadv import APGDT
from fastadv.autoattack import AutoAttack
from fastadv.bench import attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits-cnn", choices=["digits-cnn", "digits-cnn-fgsm-rs"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", default="apgd-ce,apgd-t,fab-t,square")
    args = parser.parse_args()
    model, x, y = attack.make_case(args.model, args.batch, torch.device("cpu"))
    eps = attack.EPS[args.model]
    ours = AutoAttack(model, eps=eps, log=None)
    for _, stage in ours.stages:
        if isinstance(stage, APGDT):
            stage.target_batch = 250  # what AutoAttack.run(batch_size=250) sets
    names = [name for name, _ in ours.stages]
    theirs = dict(zip(names, attack.torchattacks_autoattack(model, eps, 100).attacks, strict=True))
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    for name, stage in ours.stages:  # the cascade, to find each stage's samples
        index = robust.nonzero().squeeze(1)
        if name in args.stages.split(","):
            _compare(name, stage, theirs[name], model, x[index], y[index], args.rounds, eps)
        robust[index[stage.run(x[index], y[index]).success]] = False


def _compare(name, stage, peer, model, x, y, rounds, eps) -> None:
    calls = {"fastadv": lambda: stage.run(x, y).adv, "torchattacks": lambda: peer(x, y)}
    if name == "apgd-t":
        one_by_one = APGDT(model, eps=eps, steps=100, n_restarts=1, n_target_classes=9, early_stop=True)
        calls = {"fastadv-one-target-at-a-time": lambda: one_by_one.run(x, y).adv, **calls}
    seconds = {k: [] for k in calls}
    fooled = {}
    for _ in range(rounds):
        for provider, call in calls.items():
            start = time.perf_counter()
            adv = call()
            seconds[provider].append(time.perf_counter() - start)
            with torch.no_grad():
                fooled[provider] = int((model(adv).argmax(1) != y).sum())
    print(f"{name} on {x.shape[0]} samples: " + "; ".join(
        f"{p} {statistics.median(s):.2f} s (fooled {fooled[p]})" for p, s in seconds.items()), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
