"""Where `evaluate`'s memory goes, batch by batch (how its growth with N was found): the process's RSS
and its peak (VmHWM) after every batch, with glibc's heap in use, free and mmapped (mallinfo2).

    python benchmarks/eval_memory_trace.py FOLDER LIMIT BATCH_SIZE [TORCHSCRIPT_MODEL]

LIMIT 0 attacks every image of the image folder FOLDER (FGSM, eps 0.1, no workers). The RSS
after each batch stays flat when nothing is retained; a step in the peak marks a batch whose
working set (the samples attacked) was larger.
"""

import ctypes
import sys

import torch

import fastadv.evaluation.engine as E
from fastadv.data import ImageFolderSource, select


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                                               "keepcost".split()]  # fmt: skip


def _rss_and_peak() -> tuple[int, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                values[line[:5]] = int(line.split()[1]) >> 10
    return values["VmRSS"], values["VmHWM"]


def main() -> None:
    folder, limit, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    original = E._evaluate_batch

    def traced(job, x, y, index, sums):
        original(job, x, y, index, sums)
        m = libc.mallinfo2()
        rss, peak = _rss_and_peak()
        print(f"batch {index}: RSS {rss} MiB, peak {peak} MiB; heap {m.arena >> 20} MiB, in use {m.uordblks >> 20}, "
              f"free {m.fordblks >> 20}, mmapped {m.hblkhd >> 20} MiB in {m.hblks} blocks", flush=True)  # fmt: skip

    E._evaluate_batch = traced
    if len(sys.argv) > 4:
        model = torch.jit.load(sys.argv[4])
    else:
        torch.manual_seed(0)
        nn = torch.nn
        model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(8, 10)).eval()  # fmt: skip
    source = ImageFolderSource(folder)
    print(f"indexed {len(source)} files: RSS, peak {_rss_and_peak()} MiB", flush=True)
    E.evaluate(model, select(source, limit=limit or None), ["fgsm"], [0.1], batch_size=batch_size, workers=0,
               progress=False)  # fmt: skip


if __name__ == "__main__":
    main()
