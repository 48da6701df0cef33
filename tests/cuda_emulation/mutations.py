"""Mutation check of the CUDA emulation: each mutation puts one deliberate bug into a copy of
csrc/, builds the emulation from that copy and runs the emulated op suite, which must fail.

    python tests/cuda_emulation/mutations.py            # every mutation (about 1-2 minutes each)
    python tests/cuda_emulation/mutations.py --only removed-barrier,off-by-one-tail

Prints one row per mutation (caught or MISSED, the first failing test, seconds) and exits with 1
if any mutation was missed. Not part of the test run: it builds the emulation once per mutation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = [
    "tests/cuda_emulation/test_emulation.py",
    "tests/ops/test_linf_exact.py",
    "tests/ops/test_l2.py",
    "tests/ops/test_linf_layout.py",
]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # under csrc/
    old: str
    new: str
    what: str


MUTATIONS = [
    Mutation(
        "removed-barrier",
        "cuda/step_kernels.cuh",
        "  if (lane == 0) warp_sums[warp] = v;\n  __syncthreads();\n",
        "  if (lane == 0) warp_sums[warp] = v;\n",
        "block_sum reads the warps' partial sums without waiting for them",
    ),
    Mutation(
        "removed-reuse-barrier",
        "cuda/step_kernels.cuh",
        "  v = warp_sums[0];\n  __syncthreads();  // warp_sums may be reused by the next call\n",
        "  v = warp_sums[0];\n",
        "the next block_sum overwrites warp_sums[0] before every thread has read the total",
    ),
    Mutation(
        "off-by-one-tail",
        "cuda/step_kernels.cuh",
        "for (index_t i = packs * kVec + first; i < numel; i += stride)",
        "for (index_t i = packs * kVec + first; i <= numel; i += stride)",
        "the L-inf tail loop reads and writes one element past the end",
    ),
    Mutation(
        "wrong-alignment-test",
        "cuda/step_cuda.cu",
        "aligned_to(x_adv, kBytesPerPack) && aligned_to(x, kBytesPerPack) &&",
        "aligned_to(x_adv, kBytesPerPack) &&",
        "vector loads of x without checking its alignment",
    ),
    Mutation(
        "wrong-channel-index-channels-last",
        "step_args.cpp",
        "g.channel_div = order == 0 ? spatial : 1;",
        "g.channel_div = order == 0 ? spatial : channels;",
        "per-channel parameters read at the wrong channel under channels_last",
    ),
    Mutation(
        "wrong-partial-count",
        "cuda/step_kernels.cuh",
        "const float delta_sum_sq = sum_partials(row, chunks);",
        "const float delta_sum_sq = sum_partials(row, chunks - 1);",
        "the split L2 path sums one partial of ||delta||^2 too few",
    ),
    Mutation(
        "shuffle-on-partial-warp",
        "cuda/step_kernels.cuh",
        "constexpr int kThreads = 256;",
        "constexpr int kThreads = 240;",
        "blocks of 240 threads: the last warp has 16 lanes, the shuffles name 32",
    ),
    Mutation(
        "wrong-per-sample-stride",
        "step_args.cpp",
        "return StepParam{t.data_ptr<float>(), rows == 1 ? 0 : cols, cols == 1 ? 0 : 1, 0.f};",
        "return StepParam{t.data_ptr<float>(), rows == 1 ? 0 : 1, cols == 1 ? 0 : 1, 0.f};",
        "a [B, C] parameter table read with a sample stride of 1 instead of C",
    ),
    Mutation(
        "32-bit-index-l2",
        "cuda/step_kernels.cuh",
        "    const int64_t base = b * n;\n",
        "    const int32_t base = static_cast<int32_t>(b * n);\n",
        "the L2 sample offset in 32 bits: wrong past element 2^31",
    ),
    Mutation(
        "32-bit-index-linf",
        "cuda/step_cuda.cu",
        "    go(int64_t{});\n",
        "    go(int32_t{});\n",
        "L-inf with 32-bit indices on more than 2^31 elements",
    ),
    Mutation(
        "uncapped-l2-grid",
        "cuda/step_cuda.cu",
        "    const int64_t blocks = capped_blocks(batch, device);\n",
        "    const int64_t blocks = batch;\n",
        "one block per sample again: gridDim.x overflows past 2^31 - 1 samples",
    ),
    Mutation(
        "missing-launch-check",
        "cuda/step_cuda.cu",
        "                                                             chunks, items, p, g, targeted);\n"
        "  C10_CUDA_KERNEL_LAUNCH_CHECK();\n  l2_chunk_kernel<2",
        "                                                             chunks, items, p, g, targeted);\n"
        "  l2_chunk_kernel<2",
        "a launch not followed by an error check",
    ),
    Mutation(
        "default-stream",
        "cuda/step_cuda.cu",
        "l2_sample_kernel<kStep, 4><<<blocks, kThreads, 0, stream>>>",
        "l2_sample_kernel<kStep, 4><<<blocks, kThreads>>>",
        "a launch on the default stream instead of the current one",
    ),
]


def _apply(mutation: Mutation, csrc: Path) -> None:
    path = csrc / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(
            f"{mutation.name}: expected the text to mutate once in {mutation.path}, found it {count} times"
        )
    path.write_text(text.replace(mutation.old, mutation.new))


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    if "Fatal Python error" in output or "Segmentation fault" in output:
        return "the test process crashed"
    return output.strip().splitlines()[-1] if output.strip() else "no output"


def run(mutation: Mutation, workdir: Path) -> tuple[bool, str, float]:
    csrc = workdir / mutation.name / "csrc"
    shutil.copytree(REPO / "csrc", csrc)
    _apply(mutation, csrc)
    env = dict(
        os.environ,
        FASTADV_CUDA_EMULATION_SOURCE=str(csrc),
        FASTADV_CUDA_EMULATION_BUILD=str(workdir / mutation.name / "build"),
        FASTADV_EXPECT_CUDA_KERNELS="1",  # a mutation that breaks the build fails, not skips
    )
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *SUITE, "-k", "emulat", "-x", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    caught = result.returncode != 0
    return caught, _first_failure(result.stdout + result.stderr) if caught else "", time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated mutation names")
    args = parser.parse_args()
    chosen = MUTATIONS
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTATIONS}
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
        chosen = [m for m in MUTATIONS if m.name in names]
    missed = 0
    with tempfile.TemporaryDirectory(prefix="fastadv-mutations-") as tmp:
        print("| mutation | what it breaks | result | first failing test | seconds |\n|---|---|---|---|---|")
        for mutation in chosen:
            caught, failure, seconds = run(mutation, Path(tmp))
            missed += not caught
            result = "caught" if caught else "MISSED"
            print(f"| {mutation.name} | {mutation.what} | {result} | {failure} | {seconds:.0f} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
