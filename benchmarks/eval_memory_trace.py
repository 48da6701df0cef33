"""Where `evaluate`'s memory goes, batch by batch (how its growth with N was found): the process's RSS
after every batch, its peak during that batch (VmHWM, reset before each batch through
/proc/self/clear_refs), how many samples the batch attacked, and glibc's heap in use, free and
mmapped (mallinfo2).

    python benchmarks/eval_memory_trace.py FOLDER LIMIT BATCH_SIZE [TORCHSCRIPT_MODEL]

LIMIT 0 attacks every image of the image folder FOLDER (FGSM, eps 0.1, no workers). The RSS
after each batch stays flat when nothing is retained; a batch's own peak is its working set,
which grows with the samples it attacks (those the model classifies correctly): batches that
attack as many samples peak alike, whatever came before them, when nothing of one batch outlives it.
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


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM back to the RSS now


def main() -> None:
    folder, limit, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    original = E._evaluate_batch

    def traced(job, x, y, index, sums, *rest):
        attacked = float(sums.t["attacked"].sum())
        _reset_peak()
        original(job, x, y, index, sums, *rest)
        attacked = int(float(sums.t["attacked"].sum()) - attacked)
        m = libc.mallinfo2()
        rss, peak = _rss_and_peak()
        print(f"batch {index}: attacked {attacked}/{len(y)}; RSS {rss} MiB, peak in the batch {peak} MiB; heap "
              f"{m.arena >> 20} MiB, in use {m.uordblks >> 20}, free {m.fordblks >> 20}, mmapped {m.hblkhd >> 20} MiB "
              f"in {m.hblks} blocks", flush=True)  # fmt: skip

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
