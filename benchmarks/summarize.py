"""Markdown tables of the step benchmark from a results CSV (the rows of one git SHA).

python benchmarks/summarize.py benchmarks/results/bench_step_cpu.csv [--sha SHA] [--fused fused-cpu]
"""

import argparse
import csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--sha", help="git SHA prefix (default: the newest run in the file)")
    parser.add_argument("--fused", default="fused-cpu", help="fused provider to tabulate (default: fused-cpu)")
    args = parser.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    sha = args.sha or rows[-1]["git_sha"]
    rows = [r for r in rows if r["git_sha"].startswith(sha)]
    if not rows:
        raise SystemExit(f"--sha: no rows for {sha!r} in {args.csv}")
    value = {(r["kernel"], r["size"], r["dtype"], r["provider"], r["metric"]): float(r["median"]) for r in rows}
    print(f"{rows[0]['device']}, torch {rows[0]['torch']}, git {rows[0]['git_sha']}, medians:\n")
    print(
        "| kernel | case | dtype | eager ms | compile ms | fused ms | fused vs eager | fused vs compile "
        "| fused / copy bandwidth |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    cases = dict.fromkeys((r["kernel"], r["size"], r["dtype"]) for r in rows)
    for kernel, case, dtype in cases:

        def get(provider, metric="time", key=(kernel, case, dtype)):
            return value.get((*key, provider, metric))

        eager, comp, fused = get("eager"), get("compile"), get(args.fused)
        if None in (eager, fused):
            continue
        frac = get(args.fused, "fraction_of_copy_bandwidth")
        vs_compile = f"{comp / fused:.1f}x" if comp else "-"
        print(
            f"| {kernel} | {case} | {dtype} | {eager:.2f} | {comp or float('nan'):.2f} | {fused:.2f} | "
            f"{eager / fused:.1f}x | {vs_compile} | {100 * frac:.0f}% |"
        )


if __name__ == "__main__":
    main()
