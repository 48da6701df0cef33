"""The server-side latency of one slider move in `fastadv demo` on the digits CNN: the page's
handler (fastadv.demo.app.Page.show: the seeded attack, the probabilities before and after, the
three pictures and the table) timed per call, next to the bare attack call
(`attack.run(x, y)`, the baseline measured in the same run) to show what the page adds. The
last cases put the model behind bit depth reduction (the page's "bits:5"), attacked plainly and
adaptively (BPDA).

    python benchmarks/demo_latency.py [--moves 50] [--threads N]

Prints one line per attack: median and 90th percentile in ms over --moves slider moves, each at
a new eps (as a drag sends them), on test images taken in turn."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastadv.demo import ATTACKS, Explorer
from fastadv.demo.app import Page
from fastadv.demo.defense_choices import NO_DEFENSE, defended
from fastadv.demo.registry import Settings

# (attack, steps, defence, adaptive)
CASES = (("FGSM", 1, NO_DEFENSE, False), ("PGD", 20, NO_DEFENSE, False), ("MI-FGSM", 20, NO_DEFENSE, False),
         ("PGD-L2", 20, NO_DEFENSE, False), ("FGSM", 1, "bits:5", False), ("FGSM", 1, "bits:5", True),
         ("PGD", 20, "bits:5", False), ("PGD", 20, "bits:5", True))  # fmt: skip


def _cached_digits_model() -> torch.nn.Module:
    """The model `fastadv demo` serves by default (trained once and cached, as `fastadv eval`)."""
    from fastadv.digits_models import digits_model_cache
    from fastadv.options.inputs import default_model

    return default_model(digits_model_cache(), quiet=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from fastadv.data import digits

    images, labels = digits("test")
    explorer = Explorer(_cached_digits_model(), images, labels)
    page = Page(explorer)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.moves} slider moves per attack")
    for name, steps, defense, adaptive in CASES:
        top = explorer.eps_max(ATTACKS[name].norm)
        page_ms, bare_ms = [], []
        for move in range(args.moves + 3):  # the first 3 warm up
            picture, eps = explorer.picture(move % 32), top * (move % 30 + 1) / 30
            start = time.perf_counter()
            outputs = page.show(picture, name, eps, steps, 0.25, False, 1, 0, defense, adaptive, 1)
            page_ms.append(1000 * (time.perf_counter() - start))
            assert outputs[-1] == "", outputs[-1]
            x, y = picture.image.unsqueeze(0), torch.tensor([picture.label])
            model = defended(explorer.model, defense, 0, explorer.device)
            settings = Settings(eps, eps / 4, steps, False, torch.Generator(), adaptive)
            attack = ATTACKS[name].build(model, settings)
            start = time.perf_counter()
            attack.run(x, y)
            bare_ms.append(1000 * (time.perf_counter() - start))
        page_ms, bare_ms = page_ms[3:], bare_ms[3:]

        def median_p90(values):
            return statistics.median(values), statistics.quantiles(values, n=10)[-1]

        (pm, p90), (bm, b90) = median_p90(page_ms), median_p90(bare_ms)
        label = (f"{name}-{steps}" if steps > 1 else name) + ("" if defense == NO_DEFENSE else f" {defense}") + (
            ", adaptive" if adaptive else "")  # fmt: skip
        print(f"{label:>28}: slider move {pm:7.1f} ms median, {p90:7.1f} ms p90 | bare attack.run {bm:7.1f} ms "
              f"median, {b90:7.1f} ms p90 | page overhead x{pm / bm:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
