"""AutoAttack's stages one by one: fastadv's against torchattacks' at the same budget, on the
samples each stage attacks in the cascade (those the earlier stages left robust), the providers
taking turns round by round. APGD-T is also run one target class at a time (APGDT without
target_batch), as AutoAttack ran it before its target classes went side by side.

    OMP_NUM_THREADS=1 python benchmarks/autoattack_stages.py --model digits-cnn --batch 128 --rounds 2

Prints one line per stage and provider: the median seconds, how many samples it fooled, and the
model's share (both providers attack the same model, wrapped to count its calls and rows and to
time its forward passes and its backward passes): what is left is the attack's own work.
--cpu-time measures the process's CPU time instead of the wall clock (one thread: a busy shared
host then moves the numbers much less).
"""

import argparse
import statistics
import time

import torch

from fastadv import APGDT
from fastadv.attacks.autoattack import AutoAttack
from fastadv.bench import attack


class _Mark(torch.autograd.Function):
    """Identity that reads the clock in the backward pass: at the logits (the model's backward
    starts) and at the images (it ends)."""

    @staticmethod
    def forward(ctx, x, clock, end):
        ctx.clock, ctx.end = clock, end
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        clock = ctx.clock
        if ctx.end:
            clock.backward_s += clock.now() - clock.started
            clock.backward_calls += 1
        else:
            clock.started = clock.now()
        return grad, None, None


class ClockedModel(torch.nn.Module):
    """`model` with its forward and backward passes counted and timed (`now`: the clock)."""

    def __init__(self, model: torch.nn.Module, now=time.perf_counter):
        super().__init__()
        self.model, self.now = model, now
        self.reset()

    def reset(self) -> None:
        self.forward_s = self.backward_s = self.started = 0.0
        self.forward_calls = self.backward_calls = self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        graph = torch.is_grad_enabled() and x.requires_grad
        if graph:
            x = _Mark.apply(x, self, True)
        start = self.now()
        out = self.model(x)
        self.forward_s += self.now() - start
        self.forward_calls += 1
        self.rows += x.shape[0]
        return _Mark.apply(out, self, False) if graph else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits-cnn", choices=["digits-cnn", "digits-cnn-fgsm-rs"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", default="apgd-ce,apgd-t,fab-t,square")
    parser.add_argument("--cpu-time", action="store_true", help="time.process_time instead of the wall clock")
    args = parser.parse_args()
    now = time.process_time if args.cpu_time else time.perf_counter
    plain, x, y = attack.make_case(args.model, args.batch, torch.device("cpu"))
    model = ClockedModel(plain, now).eval()
    eps = attack.EPS[args.model]
    ours = AutoAttack(model, eps=eps, log=None)
    ours.batch_targets(250, x.device)  # what AutoAttack.run(batch_size=250) sets
    names = [name for name, _ in ours.stages]
    theirs = dict(zip(names, attack.torchattacks_autoattack(model, eps, 100).attacks, strict=True))
    with torch.no_grad():
        robust = plain(x).argmax(1) == y
    for name, stage in ours.stages:  # the cascade, to find each stage's samples
        index = robust.nonzero().squeeze(1)
        if name in args.stages.split(","):
            _compare(name, stage, theirs[name], model, x[index], y[index], args.rounds, eps, now)
        robust[index[stage.run(x[index], y[index]).success]] = False


def _compare(name, stage, peer, model, x, y, rounds, eps, now) -> None:
    calls = {"fastadv": lambda: stage.run(x, y).adv, "torchattacks": lambda: peer(x, y)}
    if name == "apgd-t":
        one_by_one = APGDT(model, eps=eps, steps=100, n_restarts=1, n_target_classes=9, early_stop=True)
        calls = {"fastadv-one-target-at-a-time": lambda: one_by_one.run(x, y).adv, **calls}
    seconds = {k: [] for k in calls}
    split = {}
    fooled = {}
    for _ in range(rounds):
        for provider, call in calls.items():
            model.reset()
            start = now()
            adv = call()
            seconds[provider].append(now() - start)
            split[provider] = (model.forward_s, model.forward_calls, model.rows, model.backward_s, model.backward_calls)
            with torch.no_grad():
                fooled[provider] = int((model.model(adv).argmax(1) != y).sum())
    for provider, s in seconds.items():
        total = statistics.median(s)
        fwd, fwd_calls, rows, bwd, bwd_calls = split[provider]  # (the last round's)
        print(f"{name} on {x.shape[0]} samples: {provider} {total:.2f} s (fooled {fooled[provider]}); model forward "
              f"{fwd:.2f} s ({fwd_calls} calls, {rows} rows), backward {bwd:.2f} s ({bwd_calls}), "
              f"own work {total - fwd - bwd:.2f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
