"""The projection at the heart of FAB (Croce and Hein 2020): the smallest step, in L-inf or L2,
from a point onto a hyperplane while staying inside a box, for a whole batch at once on the
device (no host synchronisation).

Problem, per sample: given a point t in the box [lo, hi], a hyperplane w . z = b, find d with
the smallest ||d|| such that w . (t + d) = b and lo <= t + d <= hi (or, when the box does not
reach the hyperplane, the step that gets closest: every coordinate moved to its bound).

Orient w so that c = w . t - b >= 0: the step must lower w . z by c. Each coordinate i can move
by at most room_i towards lowering it (t_i - lo_i where w_i > 0, hi_i - t_i where w_i < 0). For
L-inf the optimal step is d_i = -sign(w_i) min(lam, room_i) for the smallest lam with
sum_i |w_i| min(lam, room_i) = c; for L2 it is d_i = -sign(w_i) min(mu |w_i|, room_i), i.e. the
same equation sum_i q_i min(mu, r_i) = c with q_i = w_i^2 and r_i = room_i / |w_i|. Both are one
piecewise linear, non-decreasing function of the multiplier: sorting the breakpoints r_i, its
value at each is a cumulative sum, and the segment holding c is found by `searchsorted`, the
multiplier by solving the segment's linear equation. (The original finds the segment by a
bisection loop per sample group; the result is the same.)
"""

from __future__ import annotations

import torch


def project_onto_hyperplane(
    t: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    norm: str,
    finite_box: bool = False,
) -> torch.Tensor:
    """d [B, n] (float32): the smallest step in `norm` ("linf" or "l2") from t [B, n] onto the
    hyperplane w . z = b (w [B, n], b [B]) inside the box [lo, hi] (broadcastable to [B, n]).
    Coordinates with w_i = 0 never move. finite_box: the caller knows t, lo and hi are finite,
    which makes every L-inf breakpoint finite and skips two masks (the same result, fewer ops)."""
    t, w, b = t.float(), w.float(), b.float()
    c = (w * t).sum(1) - b
    orientation = torch.where(c >= 0, 1.0, -1.0).unsqueeze(1)
    w = w * orientation
    c = c.abs()
    # how far each coordinate may move in the direction that lowers w . z
    room = torch.where(w > 0, t - lo, hi - t).clamp_min(0)
    magnitude = w.abs()
    if norm == "linf":
        weight, breakpoint = magnitude, room
    elif norm == "l2":
        weight = magnitude.square()
        breakpoint = torch.where(magnitude > 0, room / magnitude, torch.full_like(room, float("inf")))
    else:
        raise ValueError(f"norm must be 'linf' or 'l2'; got {norm!r}")
    multiplier = _solve_piecewise_linear(weight, breakpoint, c, all_finite=finite_box and norm == "linf")
    if norm == "linf":
        step = torch.minimum(multiplier.unsqueeze(1), room)
    else:
        step = torch.minimum(multiplier.unsqueeze(1) * magnitude, room)
    return torch.where(magnitude > 0, -torch.sign(w) * step, torch.zeros_like(step))


def _solve_piecewise_linear(weight: torch.Tensor, breakpoint: torch.Tensor, c: torch.Tensor,
                            all_finite: bool = False) -> torch.Tensor:  # fmt: skip
    """The smallest m >= 0 with sum_i weight_i min(m, breakpoint_i) = c, per row; +inf where even
    m = inf does not reach c (every coordinate then moves its full room). all_finite: the caller
    knows every breakpoint is finite (L-inf's rooms), which skips two masks that change nothing
    then (FAB solves this twice per step, and the step is mostly such small ops)."""
    order = breakpoint.argsort(dim=1)
    r = breakpoint.gather(1, order)
    q = weight.gather(1, order)
    # the coordinates with an infinite breakpoint (w_i = 0 for L2) carry no weight
    finite_r = r if all_finite else torch.where(torch.isfinite(r), r, torch.zeros_like(r))
    saturated = torch.cumsum(q * finite_r, dim=1)  # sum over the first k+1 of weight * breakpoint
    weight_so_far = torch.cumsum(q, dim=1)
    total = weight_so_far[:, -1:]
    # the function's value at each breakpoint: the ones up to it saturated, the rest at it
    value_at = saturated + finite_r * (total - weight_so_far)
    if not all_finite:
        value_at = torch.where(torch.isfinite(r), value_at, torch.full_like(value_at, float("inf")))
    k = torch.searchsorted(value_at.contiguous(), c.unsqueeze(1).contiguous(), right=True)  # breakpoints passed
    zero = torch.zeros_like(c.unsqueeze(1))
    saturated_before = torch.cat([zero, saturated], 1).gather(1, k)
    weight_before = torch.cat([zero, weight_so_far], 1).gather(1, k)
    remaining = (total - weight_before).squeeze(1)
    solvable = remaining > 0
    m = (c - saturated_before.squeeze(1)) / torch.where(solvable, remaining, torch.ones_like(remaining))
    return torch.where(solvable, m.clamp_min(0), torch.full_like(m, float("inf")))
