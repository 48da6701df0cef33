"""Square Attack (Andriushchenko et al. 2020): a random search over square-shaped updates that
only reads the model's scores (no gradients), for the L-inf and L2 balls."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import checks as check
from .. import ops
from .base import Attack, Call, options_without
from .gradient import RunState
from .params import AttackParams, per_sample
from .progress import Ticker
from .result import AttackResult, Best, confidence_of, finite_rows

SQUARE_LOSSES = ("margin", "ce")
# The paper's schedule, in iterations of a 10000-query budget: after each mark the share of the
# image a square covers halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration: int, n_queries: int, p_init: float, rescale: bool) -> float:
    """The share p of the image's pixels the square of `iteration` (0-based) covers: p_init,
    halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000; with `rescale`
    the marks are stretched to a budget of n_queries iterations instead of 10000."""
    at = int(iteration / n_queries * 10000) if rescale else iteration
    return p_init / 2 ** bisect.bisect_left(_HALVINGS, at)


def square_side(p: float, height: int, width: int, norm: str) -> int:
    """The side of a square covering the share p of a height x width image: at least 1 pixel
    (L-inf), or at least 3 and odd (L2, whose update has a centre); at most the image's side."""
    side = max(int(round(math.sqrt(p * height * width))), 1 if norm == "linf" else 3)
    if norm == "l2" and side % 2 == 0:
        side += 1
    return min(side, height, width)


def _bump(rows: int, cols: int) -> torch.Tensor:
    """rows x cols, unit L2 norm (float64): nested squares around (rows // 2, cols // 2), the
    k-th (half side k) weighted 1 / (k + 1)^2, so a pixel at Chebyshev distance d from the
    centre holds the sum of the weights of the squares k >= d."""
    if rows == 0:
        return torch.zeros(0, cols, dtype=torch.float64)
    count = max(rows // 2, cols // 2) + 1
    weights = 1.0 / torch.arange(1, count + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    dist_rows = (torch.arange(rows) - rows // 2).abs()
    dist_cols = (torch.arange(cols) - cols // 2).abs()
    bump = tail[torch.maximum(dist_rows[:, None], dist_cols[None, :])]
    return bump / bump.norm()


@functools.lru_cache(maxsize=64)
def l2_square_pattern(side: int, device: torch.device) -> torch.Tensor:
    """The L2 attack's update inside a side x side square (float32, unit L2 norm): a bump in
    the upper rows and a negated bump in the lower ones, so the square changes the image in
    two opposite directions. Shared: do not write into it."""
    pattern = torch.cat([_bump(side // 2, side), -_bump(side - side // 2, side)])
    return (pattern / pattern.norm()).float().to(device)


@dataclass
class _Search(RunState):
    """One run's samples still searched: the point each has accepted, with the objective
    (minimized: the attack's loss, negated when untargeted), the model's logits there and
    whether it fools. (The class, its probability and the loss are read from these when a
    sample leaves: four tensors follow each accepted query, not six and a softmax.)"""

    x_best: torch.Tensor
    objective: torch.Tensor
    logits: torch.Tensor
    success: torch.Tensor


class Square(Attack):
    r"""Square Attack: "Square Attack: a query-efficient black-box adversarial attack via random
    search", Andriushchenko, Croce, Flammarion and Hein, ECCV 2020, https://arxiv.org/abs/1912.00049.

    Distance: L-inf or L2. Score-based: only the model's outputs are read, never a gradient, so
    a model whose gradients are masked (non-differentiable input quantization, say) or detached
    is attacked as well as any. Each iteration proposes, per sample, a change inside a random
    square (L-inf: the square's pixels set to the corners of the ball, one random sign per
    channel; L2: a two-bump pattern that moves mass between the square and a second one) and
    keeps it when it lowers the margin (or CE) loss or fools the model. The squares shrink on the
    paper's schedule (see :func:`square_fraction`). A sample leaves the batch once fooled, which
    is compacted, so it costs no more queries. Each candidate is projected into the ball and the
    bounds by the fused ops.

    The clean images are evaluated first: a sample the model already gets wrong (targeted: the
    target already predicted) is returned as it is, after one query. Then each of the
    ``n_restarts`` runs attacks the samples not yet fooled, from a new random start (L-inf:
    vertical stripes at +-eps; L2: a tiling of the pattern, scaled to norm eps) and for up to
    ``n_queries`` iterations. Unfooled samples return the point of lowest loss found.

    Arguments (order and defaults as torchattacks):
        model (nn.Module or callable): maps images [B, C, H, W] to logits [B, K].
        norm ("Linf" | "L2", or "linf" | "l2"): Default: "Linf".
        eps (float or tensor [B]): radius, in pixel units (L-inf: also per channel). Default: 8/255.
        n_queries (int): iterations per run (one model query per sample each). Default: 5000.
        n_restarts (int): runs, each on the samples not yet fooled. Default: 1.
        p_init (float in (0, 1]): the share of the image the first squares cover. Default: 0.8.
        loss ("margin" | "ce"): the score minimized: the margin of the label's logit over the best
            other one (targeted: of the best other over the target's), or the cross-entropy
            (maximized untargeted, minimized targeted). Default: "margin".
        resc_schedule (bool): fit the schedule's marks to n_queries instead of 10000 queries
            (AutoAttack's Square stage runs with False). Default: True.
        seed (int or None): seeds the random search when no `generator` is given. Default: 0.
        verbose (bool): print the robust accuracy after each run. Default: False.
        **options: targeted, lower, upper, mean, std, amp, channels_last, backend, generator,
            model_mode: as for :class:`fastadv.PGD`. Not early_stop: a fooled sample always stops.

    Returns (``run``): an :class:`AttackResult` whose ``queries`` (int64 [B]) counts the model
    evaluations spent on each sample (the clean check, each run's start and iterations), and
    whose ``steps_used`` counts the iterations (proposed squares) alone. ``loss`` is the
    attack's loss as fastadv's other attacks report it ("margin": the best other logit minus the
    label's, "ce": the cross-entropy).

    Shape: images [B, C, H, W] in [lower, upper], float32/float16/bfloat16; labels [B] int64 (the
    targets when targeted). Returns images of the same shape and dtype.

    Example:
        >>> attack = fastadv.Square(model, norm="Linf", eps=8/255, n_queries=5000)
        >>> result = attack.run(images, labels)
        >>> result.success_rate, result.queries.float().mean()
    """

    supported_options = options_without("early_stop")
    unsupported_because = {"early_stop": "Square always stops searching for a sample once it is fooled"}
    _shown = ("norm", "eps", "n_queries", "n_restarts", "p_init", "loss", "targeted", "amp")

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float | torch.Tensor = 8 / 255,
        n_queries: int = 5000,
        n_restarts: int = 1,
        p_init: float = 0.8,
        loss: str = "margin",
        resc_schedule: bool = True,
        seed: int | None = 0,
        verbose: bool = False,
        **options: Any,
    ):
        self.norm = check.norm(norm)
        super().__init__(model, **options)
        self.eps = check.parameter("eps", eps, nonnegative=True)
        self.n_queries = check.positive_int("n_queries", n_queries)
        self.n_restarts = check.positive_int("n_restarts", n_restarts)
        self.p_init = check.number("p_init", p_init, above=0, at_most=1)
        self.loss = check.choice("loss", loss, SQUARE_LOSSES)
        self.resc_schedule = check.flag("resc_schedule", resc_schedule)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed
        self.verbose = check.flag("verbose", verbose)

    def _prepare(self, images, labels):
        x, y, call = super()._prepare(images, labels)
        if images.dim() != 4:
            raise ValueError(f"images: Square needs images [B, C, H, W] (it changes squares), got shape "
                             f"{tuple(images.shape)}")  # fmt: skip
        if call.generator is None and self.seed is not None:
            call.generator = torch.Generator(device=images.device).manual_seed(self.seed)
        return x, y, call

    # --- the search -------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        started = time.perf_counter()
        b, device = x.shape[0], x.device
        best = Best(x, self.targeted)
        queries = torch.zeros(b, dtype=torch.int64, device=device)
        iterations = torch.zeros(b, dtype=torch.int64, device=device)
        self._ticker = Ticker(self.progress_hook, self.n_restarts * self.n_queries, "queries")
        with torch.no_grad():  # scores only: no graph, whatever the caller's mode
            logits, success, objective = self._score(x, y, call)
            self._record(best, None, x, logits, success, objective, final=False)  # already wrong: done
            queries += 1
            for index in range(self.n_restarts):
                keep = (~best.success).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                run = RunState(None, call.params, x, y).select(keep, call)
                self._ticker.run(index * self.n_queries)
                self._one_run(run, best, queries, iterations, call)
                if self.verbose:
                    fooled = best.success
                    mean = float(queries[fooled].float().mean()) if bool(fooled.any()) else 0.0
                    print(
                        f"restart {index} - robust accuracy: {1 - float(fooled.float().mean()):.2%} - "
                        f"avg. queries of the fooled: {mean:.1f} - cum. time: {time.perf_counter() - started:.1f} s"
                    )
        return dataclasses.replace(best.result(), steps_used=iterations, queries=queries)  # fmt: skip

    def _one_run(self, run: RunState, best: Best, queries: torch.Tensor, iterations: torch.Tensor,
                 call: Call) -> None:  # fmt: skip
        """One run from a new random start on `run`'s samples, recorded in `best`."""
        start = self._start(run.x, run.params, call)
        logits, success, objective = self._score(start, run.y, call)
        s = _Search(run.idx, run.params, run.x, run.y, start, objective, logits, success)
        queries.index_add_(0, s.idx, torch.ones_like(s.idx))
        counters = (queries, iterations)  # (counted as a sample leaves: not one op per query)
        # a candidate is projected into the ball around x and the bounds: finite when they are
        # (then its test per query is skipped; one host sync per run)
        check_finite = not _all_finite(run.x, *run.params)
        for iteration in range(self.n_queries):
            s = self._leave_if_fooled(s, best, call, iteration, counters)
            if s is None:
                return
            candidate = self._candidate(s, iteration, call)
            logits, success, objective = self._score(candidate, s.y, call, check_finite)
            # keep the candidate where it lowers the objective or fools the model (a non-finite
            # one does neither: NaN compares false and `success` excludes it)
            accept = success | (objective < s.objective)
            torch.where(per_sample(accept, s.x), candidate, s.x_best, out=s.x_best)
            torch.where(accept.unsqueeze(1), logits, s.logits, out=s.logits)
            torch.where(accept, objective, s.objective, out=s.objective)
            torch.where(accept, success, s.success, out=s.success)
            self._ticker.step(iteration + 1)
        _count(s.idx, self.n_queries, counters)
        self._record(best, s.idx, s.x_best, s.logits, s.success, s.objective, final=True)

    def _leave_if_fooled(self, s: _Search, best: Best, call: Call, done: int,
                         counters: tuple[torch.Tensor, torch.Tensor]) -> _Search | None:  # fmt: skip
        """Records the fooled samples in `best`, and the `done` iterations (each one query) they
        spent in `counters`, and returns the search without them (None when none is left). One
        host sync, two when some sample was fooled."""
        if not bool(s.success.any()):
            return s
        fooled = s.success.nonzero().squeeze(1)
        _count(s.idx.index_select(0, fooled), done, counters)
        self._record(best, s.idx.index_select(0, fooled), s.x_best.index_select(0, fooled),
                     s.logits.index_select(0, fooled), s.success.index_select(0, fooled),
                     s.objective.index_select(0, fooled), final=False)  # fmt: skip
        keep = (~s.success).nonzero().squeeze(1)
        return None if keep.numel() == 0 else s.select(keep, call)

    def _score(self, x_adv: torch.Tensor, y: torch.Tensor, call: Call, check_finite: bool = True):
        """One query: (the model's logits, success, the objective the search minimizes). A
        non-finite candidate never succeeds (check_finite=False: the caller knows x_adv is
        finite)."""
        logits = self._logits(x_adv, call)
        loss = self._loss(logits, y)
        success = self._success(logits.argmax(1), y)
        if check_finite:
            success &= finite_rows(x_adv)
        return logits, success, (loss if self.targeted else -loss)

    def _record(self, best: Best, idx: torch.Tensor | None, x_adv: torch.Tensor, logits: torch.Tensor,
                success: torch.Tensor, objective: torch.Tensor, final: bool) -> None:  # fmt: skip
        """Offers the points x_adv of the samples `idx` to `best`, with what their query gave."""
        predicted = logits.argmax(1)
        loss = objective if self.targeted else -objective
        best.add(idx, x_adv, predicted, success, loss, final, confidence=confidence_of(logits, predicted))

    # --- the proposals ----------------------------------------------------------------------

    def _start(self, x: torch.Tensor, params: AttackParams, call: Call) -> torch.Tensor:
        """A run's first point. L-inf: vertical stripes, each column of each channel at +-eps.
        L2: the image tiled with squares of side min(H, W) // 5 (centred), each holding the
        pattern (transposed at random) with a random sign per channel, scaled to norm eps."""
        b, c, h, w = x.shape
        gen, device = call.generator, x.device
        if self.norm == "linf":
            stripes = _signs((b, c, 1, w), gen, device) * per_sample(params.eps, x)
            return self._project(x.float() + stripes, x, params)
        side = max(min(h, w) // 5, 1)
        rows, cols = h // side, w // side
        pattern = l2_square_pattern(side, device)
        flip = torch.rand((b, 1, rows, cols, 1, 1), generator=gen, device=device) < 0.5
        tiles = torch.where(flip, pattern.T, pattern) * _signs((b, c, rows, cols, 1, 1), gen, device)
        delta = torch.zeros(x.shape, device=device)
        top, left = (h - rows * side) // 2, (w - cols * side) // 2
        delta[:, :, top : top + rows * side, left : left + cols * side] = tiles.permute(0, 1, 2, 4, 3, 5).reshape(
            b, c, rows * side, cols * side
        )
        return self._on_sphere(x, delta, params)

    def _candidate(self, s: _Search, iteration: int, call: Call) -> torch.Tensor:
        """The proposal of `iteration` for each sample of the search."""
        b, c, h, w = s.x.shape
        gen, device = call.generator, s.x.device
        side = square_side(square_fraction(iteration, self.n_queries, self.p_init, self.resc_schedule), h, w,
                           self.norm)  # fmt: skip
        top, left = _corners(b, h, w, side, gen, device)
        if self.norm == "linf":
            # the square's pixels go to the ball's corners: +-2 eps, then projected back
            change = _mask(top, left, side, h, w) * _signs((b, c, 1, 1), gen, device) * per_sample(s.params.eps, s.x)
            return self._project(s.x_best.float() + 2 * change, s.x, s.params)
        delta = s.x_best.float() - s.x.float()
        first = _window(top, left, side, c)
        top2, left2 = _corners(b, h, w, side, gen, device)
        second = _window(top2, left2, side, c)
        old = delta[first]
        union = _mask(top, left, side, h, w) | _mask(top2, left2, side, h, w)
        norm_union = (delta * union).square().sum((2, 3), keepdim=True).sqrt()
        norm_image = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        pattern = l2_square_pattern(side, device)
        flip = torch.rand((b, 1, 1, 1), generator=gen, device=device) < 0.5
        new = torch.where(flip, pattern.T, pattern) * _signs((b, c, 1, 1), gen, device)
        new = new + old / (old.square().sum((2, 3), keepdim=True).sqrt() + 1e-12)
        # the two squares' mass per channel, plus what the image lacks to reach norm eps
        eps = per_sample(s.params.eps, s.x)
        budget = ((eps**2 - norm_image.square()).clamp_min(0) / c + norm_union.square()).sqrt()
        new = new / (new.square().sum((2, 3), keepdim=True).sqrt() + 1e-12) * budget
        delta[second] = 0.0
        delta[first] = new
        return self._on_sphere(s.x, delta, s.params)

    def _on_sphere(self, x: torch.Tensor, delta: torch.Tensor, params: AttackParams) -> torch.Tensor:
        """x + eps delta / ||delta|| (per sample), in the bounds (and in the ball against rounding)."""
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return self._project(x.float() + delta * (per_sample(params.eps, x) / (norm + 1e-12)), x, params)

    def _project(self, point: torch.Tensor, x: torch.Tensor, params: AttackParams) -> torch.Tensor:
        """`point` (float32) in x's dtype, projected in place into the eps ball and the bounds."""
        point = point.to(x.dtype)
        project = ops.linf_project if self.norm == "linf" else ops.l2_project
        return project(point, x, params.eps, params.lower, params.upper, out=point, backend=self.backend)


def _count(idx: torch.Tensor, iterations: int, counters: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Adds `iterations` to the samples `idx` in both counters (queries, iterations)."""
    for counter in counters:
        counter.index_add_(0, idx, torch.full_like(idx, iterations))


def _all_finite(*values: float | torch.Tensor | None) -> bool:
    """Whether every number and every tensor entry of `values` is finite (None: no bound)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            if not bool(torch.isfinite(value).all()):
                return False
        elif value is not None and not math.isfinite(value):
            return False
    return True


def _signs(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform +-1.0 (float32)."""
    return torch.randint(0, 2, shape, generator=gen, device=device).float().mul_(2).sub_(1)


def _corners(b: int, h: int, w: int, side: int, gen, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the top-left corner of a side x side square inside an h x w image, uniform
    over every position (int64 [b] each)."""
    top = torch.randint(0, h - side + 1, (b,), generator=gen, device=device)
    left = torch.randint(0, w - side + 1, (b,), generator=gen, device=device)
    return top, left


def _mask(top: torch.Tensor, left: torch.Tensor, side: int, h: int, w: int) -> torch.Tensor:
    """bool [b, 1, h, w]: each sample's square."""
    in_rows = _bands(h, side, top.device).index_select(0, top)
    in_cols = _bands(w, side, top.device).index_select(0, left)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


@functools.lru_cache(maxsize=64)
def _bands(size: int, side: int, device: torch.device) -> torch.Tensor:
    """bool [size - side + 1, size]: row t is True at t .. t + side - 1. Made once per square
    size (a schedule has at most a dozen), so a query's masks are two row look-ups and an and,
    not six comparisons and sums."""
    positions = torch.arange(size, device=device)
    starts = torch.arange(size - side + 1, device=device)[:, None]
    return (positions >= starts) & (positions < starts + side)


def _window(top: torch.Tensor, left: torch.Tensor, side: int, channels: int) -> tuple[torch.Tensor, ...]:
    """An index for t[b, c, h, w] that reads or writes each sample's square as [b, c, side, side]."""
    offsets = torch.arange(side, device=top.device)
    return (
        torch.arange(top.shape[0], device=top.device).view(-1, 1, 1, 1),
        torch.arange(channels, device=top.device).view(1, -1, 1, 1),
        (top[:, None] + offsets).view(-1, 1, side, 1),
        (left[:, None] + offsets).view(-1, 1, 1, side),
    )
