"""Streamed evaluation on an image folder: memory against the data set's size, images/s with and
without worker processes, and the share of time spent waiting for data.

    python benchmarks/bench_data.py [--sizes 2000,20000] [--limit 0] [--batch-size 32]
                                    [--workers 0,2] [--json benchmarks/results/bench_data_cpu.json]

For each N in --sizes it writes N synthetic 224x224 JPEGs (10 classes; 64 distinct smooth random
colour fields with a little noise, about 16 KB each, cycled) into a temporary image folder and evaluates
torchvision's ResNet-18 (num_classes=10, random weights, no download; its last layer set to
its features' class means, so that every image is classified correctly and attacked) on it
with FGSM (eps 4/255) in a fresh process per run. By default every one of the N images is attacked
(`--limit 0`), so the larger run streams 10x the batches through the loader as well as indexing
10x the files; `--limit K` attacks the first K only (a quick check of what the index alone costs).
A thread samples the evaluating process tree (the process and its DataLoader
workers) every 100 ms from /proc: the peak of the summed RSS (shared pages counted once per
process, an upper bound) and of the summed PSS (shared pages split among the processes that map
them: the memory the tree really holds). Runs: every N with the largest --workers, and the
smallest N with every --workers (images/s = attacked samples / seconds of `evaluate`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

CHILD = r"""
import json, os, sys, time, torch
from fastadv.data import ImageFolderSource, select
from fastadv.evaluation import evaluate
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
from bench_data import make_model
folder, limit, batch_size, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = make_model()
model.fc.load_state_dict(torch.load(os.path.join(os.path.dirname(folder), "fc.pt")))
start = time.perf_counter()
source = ImageFolderSource(folder)  # indexes every file (headers only)
indexed = time.perf_counter() - start
data = select(source, limit=limit or None)
start = time.perf_counter()
report = evaluate(model, data, ["fgsm"], [4 / 255], batch_size=batch_size, workers=workers, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"indexed_files": len(source), "index_seconds": indexed, "evaluate_seconds": seconds,
                  "samples": report["samples"], "data_loading": report["data_loading"],
                  "clean_accuracy": report["clean_accuracy"],
                  "fgsm_images_per_s": report["attacks"][0]["images_per_s"]}))
"""


def make_model():
    """torchvision's ResNet-18 (num_classes=10), random weights seeded with 0 (no download)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def write_images(folder: str, count: int, classes: int = 10, size: int = 224, distinct: int = 64) -> float:
    """`count` JPEG files in `classes` sub-folders, cycling through `distinct` encoded images (on a
    loaded 2-core host encoding one takes about 0.25 s: 20,000 distinct ones would take over an
    hour, and the files' number, not their pixels, is what the memory depends on). Each class
    has its own tint. The model's last layer is set to the class means of its (random) features
    and saved as fc.pt beside the folder, and each image is filed under the class the model
    predicts for it, so every sample is classified correctly and FGSM attacks all of them.
    Returns the bytes written."""
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    generator = torch.Generator().manual_seed(0)
    tints = torch.rand(classes, 3, 1, 1, generator=generator)
    pool = []
    for i in range(min(distinct, count)):
        coarse = torch.rand(1, 3, 7, 7, generator=generator)
        field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
        image = 0.6 * tints[i % classes] + 0.4 * field + 0.03 * torch.randn(3, size, size, generator=generator)
        pool.append(encode_jpeg((image.clamp(0, 1) * 255).to(torch.uint8), quality=90).numpy().tobytes())
    decoded = torch.stack([decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8)) for b in pool]).float() / 255
    model = make_model()
    fc, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        features = model(decoded)
        tint_of = torch.arange(len(pool)) % classes
        means = torch.stack([features[tint_of == c].mean(0) for c in range(classes)])
        fc.weight.copy_(means)
        fc.bias.copy_(-0.5 * (means * means).sum(1))  # nearest class mean
        predicted = fc(features).argmax(1)
    torch.save(fc.state_dict(), os.path.join(os.path.dirname(folder), "fc.pt"))
    if len(set(predicted.tolist())) < classes:
        raise SystemExit(f"the model predicts only classes {sorted(set(predicted.tolist()))}: no image for the others")
    for c in range(classes):
        os.makedirs(os.path.join(folder, f"class{c:02d}"), exist_ok=True)
    total = 0
    for i in range(count):
        j = i % len(pool)
        with open(os.path.join(folder, f"class{int(predicted[j]):02d}", f"{i:06d}.jpg"), "wb") as f:
            f.write(pool[j])
        total += len(pool[j])
    return total


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    found, queue = [], [pid]
    while queue:
        p = queue.pop()
        found.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                queue += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of the process tree."""
    rss = pss = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def run(folder: str, limit: int, batch_size: int, workers: int) -> dict:
    """One evaluation in a fresh process, its tree's memory sampled every 100 ms."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", CHILD, folder, str(limit), str(batch_size), str(workers)],
                               stdout=subprocess.PIPE, env=env, text=True)  # fmt: skip
    peak, trace, start = [0, 0], [], time.perf_counter()

    def sample():
        while process.poll() is None:
            rss, pss = _memory(process.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            now = time.perf_counter() - start
            if not trace or now - trace[-1][0] >= 10:  # the tree's RSS every 10 s: flat, or growing?
                trace.append((round(now, 1), round(rss / 2**20)))
            time.sleep(0.1)  # the tree's memory moves slowly; sampling /proc more often costs a core

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"the evaluation failed (exit {process.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(workers=workers, peak_rss_bytes=peak[0], peak_pss_bytes=peak[1],
                  images_per_s=result["samples"] / result["evaluate_seconds"],
                  rss_mib_every_10s=trace)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="N, images in the folder (default: %(default)s)")
    parser.add_argument(
        "--limit", type=int, default=0, help="samples attacked per run, 0 for all N (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--workers", default="0,2", help="worker counts compared (default: %(default)s)")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workers = sorted(int(w) for w in args.workers.split(","))
    import torch

    results = {"host": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0)),
               "torch": torch.__version__, "limit": args.limit, "batch_size": args.batch_size, "runs": []}  # fmt: skip
    try:
        results["git_sha"] = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                            text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        results["git_sha"] = None
    for n in sizes:
        parent = tempfile.mkdtemp(prefix=f"fastadv-bench-data-{n}-")
        folder = os.path.join(parent, "images")
        try:
            start = time.perf_counter()
            written = write_images(folder, n)
            print(f"N={n}: wrote {written / 1e6:.0f} MB of JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
            for w in workers if n == sizes[0] else workers[-1:]:
                result = {"n": n, "jpeg_bytes": written, **run(folder, args.limit, args.batch_size, w)}
                results["runs"].append(result)
                print(f"N={n} workers={w}: peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB, PSS "
                      f"{result['peak_pss_bytes'] / 2**20:.0f} MiB, {result['images_per_s']:.1f} img/s, waiting "
                      f"{100 * result['data_loading']['share_waiting']:.1f}% (index {result['index_seconds']:.1f} s, "
                      f"clean accuracy {result['clean_accuracy']:.2f}, FGSM alone {result['fgsm_images_per_s']} img/s)",
                      flush=True)  # fmt: skip
        finally:
            shutil.rmtree(parent, ignore_errors=True)
    top = workers[-1]
    small, large = (
        next(r for r in results["runs"] if r["n"] == n and r["workers"] == top) for n in (sizes[0], sizes[-1])
    )
    for key in ("peak_rss_bytes", "peak_pss_bytes"):
        results[f"{key[:-6]}_ratio_largest_to_smallest"] = large[key] / small[key]
    rss, pss = results["peak_rss_ratio_largest_to_smallest"], results["peak_pss_ratio_largest_to_smallest"]
    print(f"memory N={sizes[-1]} / N={sizes[0]} ({top} workers): RSS {rss:.3f}x, PSS {pss:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
