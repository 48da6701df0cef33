"""`fastadv eval` (and `fastadv ood`) on image folders of N small JPEGs: the process tree's peak
RSS and PSS against N (flat in N: nothing of a batch outlives it). A tiny TorchScript CNN (no
download); eval: FGSM at eps 0.1, every image attacked; ood: the folder as both the
in-distribution and the OOD data, each OOD image attacked by a one-step PGD at eps 0.1.

    python benchmarks/bench_eval_memory.py [--sizes 2000,20000] [--image-size 32] [--workers 0,2]
                                           [--commands eval,ood]
                                           [--json benchmarks/results/bench_eval_memory_cpu.json]

Each N gets a temporary class folder tree (10 classes; 16 distinct noise images cycled: the
files' number, not their pixels, is what the memory may depend on); each (N, workers) runs the
CLI in a fresh process whose tree benchmarks/bench_data.py samples every 100 ms from /proc; the
DataLoader workers' own peak (their RSS and PSS summed) is kept beside the tree's.
Set PYTHONPATH to measure another checkout (the one first on it is imported).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import _memory, _tree  # noqa: E402


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of the process `pid` alone (0, 0 once it is gone)."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line[:4] in values:
                    values[line[:4]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values["Rss:"], values["Pss:"]


def write_folder(folder: str, count: int, size: int) -> None:
    import torch
    from torchvision.io import encode_jpeg

    generator = torch.Generator().manual_seed(0)
    pool = [encode_jpeg(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator), quality=90)
            .numpy().tobytes() for _ in range(16)]  # fmt: skip
    for c in range(10):
        os.makedirs(os.path.join(folder, f"class{c:02d}"), exist_ok=True)
    for i in range(count):
        with open(os.path.join(folder, f"class{i % 10:02d}", f"{i:06d}.jpg"), "wb") as f:
            f.write(pool[i % 16])


def write_model(path: str) -> None:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()  # fmt: skip
    torch.jit.trace(model, torch.rand(1, 3, 32, 32)).save(path)


def run(model: str, folder: str, workers: int, batch_size: int, out: str, kind: str = "eval") -> dict:
    if kind == "eval":
        command = [sys.executable, "-m", "fastadv", "eval", "--model", model, "--data", folder, "--attacks", "fgsm",
                   "--eps", "0.1", "--workers", str(workers), "--batch-size", str(batch_size), "--quiet",
                   "--no-plots", "--out", out]  # fmt: skip
    else:  # (fastadv ood reads its batches in this process: workers do not apply)
        command = [sys.executable, "-m", "fastadv", "ood", "--model", model, "--in", folder, "--out", folder,
                   "--eps", "0.1", "--steps", "1", "--batch-size", str(batch_size), "--quiet", "--no-plots",
                   "--results", out]  # fmt: skip
    # run outside the repository: `python -m` puts the working folder first on sys.path, which
    # would import this checkout's fastadv whatever PYTHONPATH says
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=os.path.dirname(out))  # fmt: skip
    peak, start = [0, 0, 0, 0], time.perf_counter()  # the tree's RSS and PSS, then the workers' alone

    def sample():
        while process.poll() is None:
            rss, pss = _memory(process.pid)
            workers = [_rollup(p) for p in _tree(process.pid) if p != process.pid]
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            peak[2], peak[3] = max(peak[2], sum(r for r, _ in workers)), max(peak[3], sum(p for _, p in workers))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"fastadv {kind} failed (exit {process.returncode}):\n{output[-2000:]}")
    with open(os.path.join(out, "report.json")) as f:
        samples = json.load(f)["samples"]
    return {"command": kind, "workers": workers, "samples": samples, "seconds": time.perf_counter() - start,
            "peak_rss_bytes": peak[0], "peak_pss_bytes": peak[1], "peak_workers_rss_bytes": peak[2],
            "peak_workers_pss_bytes": peak[3]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", default="0,2", help="eval's --workers (ood runs once, with none)")
    parser.add_argument("--commands", default="eval", help="eval, ood or both (comma-separated)")
    parser.add_argument("--label", default="", help="what is measured (a git sha, 'before', ...)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    import fastadv

    results = {"label": args.label, "fastadv_imported_from": os.path.dirname(fastadv.__file__),
               "host": platform.processor() or platform.machine(), "cpus": len(os.sched_getaffinity(0)),
               "load_average": os.getloadavg(), "torch": torch.__version__, "image_size": args.image_size,
               "batch_size": args.batch_size, "runs": []}  # fmt: skip
    parent = tempfile.mkdtemp(prefix="fastadv-bench-eval-memory-")
    try:
        model = os.path.join(parent, "tiny.pt")
        write_model(model)
        for n in sorted(int(s) for s in args.sizes.split(",")):
            folder = os.path.join(parent, f"images{n}")
            write_folder(folder, n, args.image_size)
            runs = [(kind, w) for kind in args.commands.split(",")
                    for w in (sorted(int(w) for w in args.workers.split(",")) if kind == "eval" else [0])]  # fmt: skip
            for kind, w in runs:
                out = os.path.join(parent, f"out-{kind}{n}-{w}")
                result = {"n": n, **run(model, folder, w, args.batch_size, out, kind)}
                results["runs"].append(result)
                mib = {k: v / 2**20 for k, v in result.items() if k.endswith("_bytes")}
                print(f"{kind} N={n} workers={w}: peak RSS {mib['peak_rss_bytes']:.0f} MiB, "
                      f"PSS {mib['peak_pss_bytes']:.0f} MiB (workers: RSS {mib['peak_workers_rss_bytes']:.0f}, "
                      f"PSS {mib['peak_workers_pss_bytes']:.0f} MiB), {result['seconds']:.0f} s",
                      flush=True)  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    results["load_average_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
