"""The side-by-side view of a defence: robust accuracy under the non-adaptive attacks and under
the adaptive ones (BPDA through the transforms, EOT over random draws, the margin loss added), and
the flag when the two disagree by more than MASKING_GAP: a defence that only hides the gradient
looks robust to the first and not to the second (Athalye, Carlini and Wagner 2018)."""

from __future__ import annotations

MASKING_GAP = 0.10  # robust accuracy, as a fraction: 10 points


def compare(plain: dict, adaptive: dict) -> list[dict]:
    """One row per eps from two reports of `fastadv.evaluation.evaluate` on the same model and
    data (the non-adaptive run and the adaptive one): clean accuracy, the worst-case robust
    accuracy of each, their gap, whether gradient masking is suspected (gap > MASKING_GAP) and
    why. Every number is a worst case over the attacks of its run, the same one the table and
    the reason print; the reason also names the adaptive attack that first fell that far."""
    rows = []
    for p, a in zip(plain["worst_case"], adaptive["worst_case"], strict=True):
        gap = p["robust_accuracy"] - a["robust_accuracy"]
        suspected = gap > MASKING_GAP
        reason = None
        if suspected:
            stages = [r for r in adaptive["attacks"] if r["eps"] == a["eps"]]
            # under the cascade each row is cumulative: the first that falls that far is the one
            first = next((r for r in stages if p["robust_accuracy"] - r["robust_accuracy"] > MASKING_GAP), stages[-1])
            reason = (
                f"the adaptive attacks (BPDA through the transforms, EOT over random draws) lower robust accuracy "
                f"to {100 * a['robust_accuracy']:.2f}% (their worst case; {first['attack']} was the first to fall "
                f"{100 * MASKING_GAP:.0f} points below) from the {100 * p['robust_accuracy']:.2f}% the non-adaptive "
                f"attacks report ({100 * gap:.2f} points): the non-adaptive gradients are masked, so their number "
                "overstates robustness"
            )
        rows.append({
            "eps": p["eps"],
            "clean_accuracy": plain["clean_accuracy"],
            "robust_accuracy": p["robust_accuracy"],
            "adaptive_robust_accuracy": a["robust_accuracy"],
            "gap": gap,
            "gradient_masking_suspected": suspected,
            "reason": reason,
        })  # fmt: skip
    return rows


def format_comparison(rows: list[dict]) -> str:
    """The rows of `compare` as a table (with a "defense" column when the rows carry one), and
    each suspicion with its reason below it."""
    named = any("defense" in r for r in rows)
    width = max([len("defense")] + [len(str(r.get("defense", ""))) for r in rows]) if named else 0
    columns = f"{'eps':>7} {'clean':>7} {'non-adaptive':>12} {'adaptive':>9} {'gap':>6}"
    lines = [(f"{'defense':<{width}} " if named else "") + columns]
    for r in rows:
        adaptive = "-" if r["adaptive_robust_accuracy"] is None else f"{100 * r['adaptive_robust_accuracy']:.2f}%"
        gap = "-" if r["gap"] is None else f"{100 * r['gap']:.1f}"
        flag = "  gradient masking suspected" if r["gradient_masking_suspected"] else ""
        lines.append((f"{r.get('defense', ''):<{width}} " if named else "")
                     + f"{r['eps']:>7.4g} {100 * r['clean_accuracy']:>6.2f}% {100 * r['robust_accuracy']:>11.2f}% "
                       f"{adaptive:>9} {gap:>6}{flag}")  # fmt: skip
    for r in rows:
        if r["reason"]:
            where = f"{r['defense']} at eps {r['eps']:.4g}" if named else f"eps {r['eps']:.4g}"
            lines.append(f"gradient masking suspected ({where}): {r['reason']}")
    return "\n".join(lines)


def plain_rows(report: dict) -> list[dict]:
    """Rows of the same shape from a non-adaptive report alone (no adaptive column)."""
    return [{"eps": w["eps"], "clean_accuracy": report["clean_accuracy"], "robust_accuracy": w["robust_accuracy"],
             "adaptive_robust_accuracy": None, "gap": None, "gradient_masking_suspected": False, "reason": None}
            for w in report["worst_case"]]  # fmt: skip
