"""FAB, the Fast Adaptive Boundary attack (Croce and Hein 2020): minimal L-inf or L2
perturbations, untargeted, targeted, and AutoAttack's multi-targeted FAB-T."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .. import checks as check
from .base import MODEL_IGNORES_IMAGES, Attack, Call, options_without
from .boundary_projection import project_onto_hyperplane
from .params import per_sample
from .progress import Ticker
from .result import AttackResult, confidence_of, finite_rows
from .target_runs import target_runs


class FAB(Attack):
    r"""FAB: "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack",
    Croce and Hein, ICML 2020, https://arxiv.org/abs/1907.02044; as in AutoAttack
    (https://github.com/fra31/auto-attack) and torchattacks.

    Each step linearises the model at the iterate x_k and picks the decision hyperplane nearest
    in the dual norm (untargeted: the closest of the other classes; targeted: the target against
    its strongest rival; FAB-T: the run's target against the label). It projects both x_k and
    the clean image x onto that hyperplane inside the box [lower, upper] (the step d_k and d_0,
    `boundary_projection.py`) and moves to the biased mix
    ``(1 - a)(x_k + eta d_k) + a (x + eta d_0)`` with ``a = min(|d_k| / (|d_k| + |d_0|), alpha_max)``.
    Once the iterate fools the model, the smallest such perturbation is kept and the iterate is
    pulled back towards x: ``x + beta (x_k - x)``.

    Runs: the first starts at x; each further restart from a random point at distance eps/2
    (uniform direction for L-inf, Gaussian for L2), drawn from ``generator`` or, when none is
    given, from a generator seeded with ``seed`` on each call (so a call is reproducible, as the
    original's manual_seed). As in the original, every run after the first only attacks the
    samples not yet fooled within eps. With ``multi_targeted=True`` (FAB-T, AutoAttack's
    "fab-t"), there is one round of ``n_restarts`` runs per target: the ``n_classes - 1`` classes
    other than the label with the highest clean logits, highest first.

    Result: ``adv`` is the smallest adversarial image found if its norm is at most eps, else the
    clean image; ``success`` says the model is fooled within eps (the prediction differs from the
    label; targeted: equals the target); ``norm`` (float32 [B]) is the norm of the smallest
    adversarial perturbation found, at any size (0 for a sample misclassified from the start,
    inf where none was found); ``loss`` is the margin at ``adv`` (label logit minus the best
    other; targeted: best other minus target), negative where fooled.

    Arguments (torchattacks' signature and defaults):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        norm (str): "Linf" or "L2" (or "linf", "l2"). Default: "Linf".
        eps (float): the budget that counts as success (>= 0), and the random starts' scale.
            Default: 8/255.
        steps (int): steps per run. Default: 10.
        n_restarts (int): runs per target (the first from the image itself). Default: 1.
        alpha_max (float): the largest weight of the clean image's projection, in [0, 1].
            Default: 0.1.
        eta (float): overshoot of the projections (>= 1). Default: 1.05.
        beta (float): the pull-back towards the image after a success, in [0, 1]. Default: 0.9.
        verbose (bool): print each run's robust accuracy, as the original. Default: False.
        seed (int): seeds the random restarts when no ``generator`` is given. Default: 0.
        multi_targeted (bool): FAB-T (labels are the true classes). Default: False.
        n_classes (int): the classes of the model (>= 2); FAB-T runs ``n_classes - 1`` targets.
            Default: 10.
        target_batch (keyword, int or None): FAB-T only: run the target classes side by side,
            up to this many (sample, target class) pairs in one batch, instead of one class after
            another. Each pair's run is independent of the others and the first run per target
            starts at the image, so with ``n_restarts=1`` (AutoAttack's FAB-T) the result is the
            one-at-a-time order's: per sample, the targets are taken in that order and a target
            counts (in ``norm``, ``adv`` and ``steps_used``) only while no earlier one has fooled
            the model within eps (up to the last bits of the model's arithmetic on a larger
            batch). Faster where most samples withstand every target: the model sees fewer and
            larger batches (digits CNN, 6 samples, 9 targets: 2.3x on a CPU); slower where the
            first target fools most, whose pairs with the later targets run for nothing. With
            more restarts, the random starts differ from the one-at-a-time runs'. None: one
            target class at a time on the samples still robust, as the original. Default: None.
        **options: targeted (labels are the targets), lower, upper, mean, std, amp,
            channels_last, backend, generator, model_mode: as for :class:`fastadv.PGD`. FAB
            keeps shrinking a perturbation after its first success, so it has no
            ``early_stop``.

    Cost per step: one forward and K backward passes untargeted (the gradient of every logit,
    as the original), one backward targeted, plus one forward to test the new iterate.

    Example:
        >>> result = fastadv.FAB(model, norm="Linf", eps=8 / 255, steps=100, multi_targeted=True).run(images, labels)
        >>> robust = ~result.success; smallest = result.norm
    """

    supported_options = options_without("early_stop")
    unsupported_because = {"early_stop": "FAB minimises the perturbation after its first success"}
    _shown = ("norm", "eps", "steps", "n_restarts", "multi_targeted", "targeted")

    def __init__(
        self,
        model: Any,
        norm: str = "Linf",
        eps: float = 8 / 255,
        steps: int = 10,
        n_restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        verbose: bool = False,
        seed: int = 0,
        multi_targeted: bool = False,
        n_classes: int = 10,
        *,
        target_batch: int | None = None,
        **options: Any,
    ):
        super().__init__(model, **options)
        self.target_batch = None if target_batch is None else check.positive_int("target_batch", target_batch)
        self.norm = check.norm(norm)
        self.eps = check.parameter("eps", eps, nonnegative=True)
        self.steps = check.positive_int("steps", steps)
        self.n_restarts = check.positive_int("n_restarts", n_restarts)
        self.alpha_max = check.probability("alpha_max", alpha_max)
        self.eta = check.number("eta", eta, at_least=1)
        self.beta = check.probability("beta", beta)
        self.verbose = check.flag("verbose", verbose)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self.multi_targeted = check.flag("multi_targeted", multi_targeted)
        self.n_classes = check.positive_int("n_classes", n_classes)
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if self.multi_targeted and self.targeted:
            raise ValueError("multi_targeted picks its own targets (labels are the true classes): "
                             "it cannot be combined with targeted=True")  # fmt: skip

    # --- the runs -----------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, y: torch.Tensor, call: Call, track: bool) -> AttackResult:
        b = x.shape[0]
        dev = x.device
        lo = torch.as_tensor(per_sample(call.params.lower, x), dtype=torch.float32, device=dev).expand_as(x)
        hi = torch.as_tensor(per_sample(call.params.upper, x), dtype=torch.float32, device=dev).expand_as(x)
        generator = call.generator
        if generator is None:
            generator = torch.Generator(dev).manual_seed(self.seed)
        eps = call.params.eps
        if isinstance(eps, torch.Tensor) and eps.dim() > 1:
            raise ValueError(f"eps must be a number or one per sample for FAB, got shape {tuple(eps.shape)}")
        eps = torch.as_tensor(eps, dtype=torch.float32, device=dev).expand(b)
        with torch.no_grad():
            clean_logits = self._logits(x, call).float()
        if clean_logits.shape[1] < self.n_classes and self.multi_targeted:
            raise ValueError(f"n_classes={self.n_classes} but the model has {clean_logits.shape[1]} outputs")
        # the smallest adversarial perturbation so far: a sample misclassified at the start has 0
        best_norm = torch.where(self._success(clean_logits.argmax(1), y), 0.0, math.inf).to(dev)
        best_adv = x.clone()
        steps_used = torch.zeros(b, dtype=torch.int64, device=dev)
        non_finite = torch.zeros(b, dtype=torch.bool, device=dev)
        if self.multi_targeted:
            others = clean_logits.scatter(1, y.unsqueeze(1), -math.inf)
            targets = others.topk(self.n_classes - 1, dim=1).indices  # [B, n_classes - 1]
        rounds = targets.shape[1] if self.multi_targeted else 1
        start = time.time()
        self._ticker = Ticker(self.progress_hook, rounds * self.n_restarts * self.steps, "steps")
        state = (best_norm, best_adv, steps_used, non_finite, eps)

        def survivors() -> torch.Tensor:
            return (best_norm > eps).nonzero().squeeze(1)

        pairs = self.target_batch if self.multi_targeted else None  # FAB-T's target classes side by side
        for run in target_runs(rounds, self.n_restarts, pairs, survivors):
            # (a run of `group` rounds: each of its steps is `group` steps' work)
            self._ticker.run(run.runs_before(self.n_restarts) * self.steps, run.group)
            owner = run.owner
            target = targets[owner, run.column] if self.multi_targeted else None
            norm, adv, finite = self._single_run(
                x.index_select(0, owner), y.index_select(0, owner), target,
                (lo.index_select(0, owner), hi.index_select(0, owner)),
                eps.index_select(0, owner) if run.restart > 0 else None, generator, call)  # fmt: skip
            _take_in_order(run.todo, run.group, norm, adv, finite, self.steps, state)
            if self.verbose:
                robust = float((best_norm > eps).float().mean())
                which = ""
                if self.multi_targeted:
                    last = f" to {run.rank + run.group + 1}" if run.group > 1 else ""
                    which = f" - target_class {run.rank + 2}{last}"
                print(f"restart {run.restart}{which} - robust accuracy: {robust:.2%} at eps = {_short_eps(self.eps)}"
                      f" - cum. time: {time.time() - start:.1f} s")  # fmt: skip
        within = best_norm <= eps
        adv = torch.where(per_sample(within, x), best_adv, x)
        with torch.no_grad():
            logits = self._logits(adv, call).float()
        predicted = logits.argmax(1)
        success = within & self._success(predicted, y)
        return AttackResult(adv, success, self._margin(logits, y), steps_used, predicted, non_finite, norm=best_norm,
                            confidence=confidence_of(logits, predicted))  # fmt: skip

    def _single_run(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                    box: tuple[torch.Tensor, torch.Tensor], start_eps: torch.Tensor | None, generator: torch.Generator,
                    call: Call) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """One run of `steps` steps on the samples x (labels y; FAB-T: the run's targets) in the
        box (lower, upper as float32 tensors of x's shape), from x or, with `start_eps` (per
        sample), from a random point at distance start_eps / 2. Returns the smallest adversarial
        norm found per sample (inf where none), its image (x where none) and whether every
        iterate stayed finite."""
        b = x.shape[0]
        lo, hi = box
        x0 = x.float()
        x1 = x
        if start_eps is not None:
            x1 = torch.minimum(torch.maximum(x0 + self._random_start(x0, start_eps, generator), lo), hi).to(x.dtype)
        best_norm = torch.full((b,), math.inf, device=x.device)
        best_adv = x.clone()
        finite = torch.ones(b, dtype=torch.bool, device=x.device)
        flat = (b, -1)
        x0_flat = x0.reshape(flat)
        # both projections of a step (the iterate's, d1, and the image's, d0) in one batch of 2b
        # rows: each row is solved on its own, so the result is the same and the per-op cost of
        # the projection is paid once per step instead of twice
        box = (torch.cat([lo.reshape(flat)] * 2), torch.cat([hi.reshape(flat)] * 2))
        # finite images and bounds keep every iterate finite (a non-finite move is never taken)
        finite_box = bool(torch.isfinite(box[0]).all() & torch.isfinite(box[1]).all() & torch.isfinite(x0).all())
        for step in range(self.steps):
            f, grad = self._boundary(x1, y, target, call)
            x1f = x1.float().reshape(flat)
            w = grad.reshape(flat)
            offset = (w * x1f).sum(1) - f  # the hyperplane w . z = offset
            d = project_onto_hyperplane(torch.cat([x1f, x0_flat]), torch.cat([w, w]), torch.cat([offset, offset]),
                                        *box, self.norm, finite_box=finite_box)  # fmt: skip
            d1, d0 = d[:b], d[b:]
            a1, a0 = self._size(d1).clamp_min(1e-8), self._size(d0).clamp_min(1e-8)
            alpha = (a1 / (a1 + a0)).clamp(0, self.alpha_max).unsqueeze(1)
            moved = (x1f + self.eta * d1) * (1 - alpha) + (x0_flat + self.eta * d0) * alpha
            moved = torch.minimum(torch.maximum(moved.view_as(x0), lo), hi)
            ok = finite_rows(moved)  # a NaN or infinite gradient: keep the last finite iterate
            finite &= ok
            x1 = torch.where(per_sample(ok, x1), moved.to(x.dtype), x1)
            with torch.no_grad():
                fooled = self._success(self._logits(x1, call).argmax(1), y) & ok
            x1f = x1.float()
            size = self._size((x1f - x0).reshape(flat))
            better = fooled & (size < best_norm)
            best_norm = torch.where(better, size, best_norm)
            best_adv = torch.where(per_sample(better, x), x1, best_adv)
            pulled = (x0 + self.beta * (x1f - x0)).to(x.dtype)
            x1 = torch.where(per_sample(fooled, x1), pulled, x1)
            self._ticker.step(step + 1)
        return best_norm, best_adv, finite

    def _boundary(self, x1: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                  call: Call) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The nearest decision hyperplane's linearisation at x1: f [b] (its function, negative
        on the label's side) and its gradient [b, ...] (float32)."""
        point = call.layout(x1).detach().requires_grad_(True)  # a tensor of its own: x1 stays a constant
        logits = self._logits(point, call)
        if target is not None or self.targeted:
            if self.targeted:  # the labels are the targets; the rival is the strongest other class
                goal, rival = y, logits.detach().float().scatter(1, y.unsqueeze(1), -math.inf).argmax(1)
            else:  # FAB-T: the run's target against the label
                goal, rival = target, y
            f = logits.gather(1, goal.unsqueeze(1)).squeeze(1) - logits.gather(1, rival.unsqueeze(1)).squeeze(1)
            grad = self._input_grad(f.sum(), point)
            return f.detach().float(), grad.float()
        # untargeted: every other class j, f_j = z_j - z_y; the nearest in the dual norm
        k = logits.shape[1]
        grads = [self._input_grad(logits[:, j].sum(), point, retain_graph=j < k - 1, unused_ok=True)
                 for j in range(k)]  # fmt: skip
        if all(g is None for g in grads):  # a constant logit alone has no gradient
            raise ValueError(MODEL_IGNORES_IMAGES)
        with torch.no_grad():
            g = (
                torch.stack([torch.zeros_like(point) if g is None else g for g in grads], 1).float().flatten(2)
            )  # [b, K, n]
            z = logits.detach().float()
            f = z - z.gather(1, y.unsqueeze(1))
            g = g - g.gather(1, y.view(-1, 1, 1).expand(-1, 1, g.shape[2]))
            dual = g.abs().sum(2) if self.norm == "linf" else g.norm(dim=2)
            distance = f.abs() / (dual + 1e-12)
            distance = distance.scatter(1, y.unsqueeze(1), math.inf)
            nearest = distance.argmin(1)
            f_near = f.gather(1, nearest.unsqueeze(1)).squeeze(1)
            g_near = g.gather(1, nearest.view(-1, 1, 1).expand(-1, 1, g.shape[2])).squeeze(1)
        return f_near, g_near.view_as(x1)

    # --- helpers ------------------------------------------------------------------------------

    def _random_start(self, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random offset of norm eps / 2 per sample: the original's restart point."""
        b = x0.shape[0]
        if self.norm == "linf":
            u = torch.rand(x0.shape, generator=generator, device=x0.device) * 2 - 1
            scale = u.reshape(b, -1).abs().amax(1)
        else:
            u = torch.randn(x0.shape, generator=generator, device=x0.device)
            scale = u.reshape(b, -1).norm(dim=1)
        return u * per_sample(eps / 2 / scale.clamp_min(1e-12), u)

    def _size(self, d: torch.Tensor) -> torch.Tensor:
        """The norm of each row of d [b, n]."""
        return d.abs().amax(1) if self.norm == "linf" else d.norm(dim=1)

    def _margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Label logit minus the best other (targeted: best other minus target): < 0 where fooled."""
        label = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        other = logits.scatter(1, y.unsqueeze(1), -math.inf).amax(1)
        return other - label if self.targeted else label - other


def _take_in_order(todo: torch.Tensor, group: int, norm: torch.Tensor, adv: torch.Tensor, finite: torch.Tensor,
                   steps: int, state: tuple[torch.Tensor, ...]) -> None:  # fmt: skip
    """Records a run of `group` rounds side by side on the samples `todo` (its rows round-major:
    row p is sample todo[p % n] in round p // n) in `state` (best_norm, best_adv, steps_used,
    non_finite, eps; updated in place) as the rounds one after another would have: a round
    counts for a sample only while its best norm is still above eps, and then replaces the best
    where its norm is smaller."""
    best_norm, best_adv, steps_used, non_finite, eps = state
    n = todo.numel()
    limit = eps.index_select(0, todo)
    for j in range(group):
        rows = slice(j * n, (j + 1) * n)
        current = best_norm.index_select(0, todo)
        reached = current > limit  # (always true for the first round of a run)
        better = reached & (norm[rows] < current)
        best_norm.index_copy_(0, todo, torch.where(better, norm[rows], current))
        taken = torch.where(per_sample(better, adv[rows]), adv[rows], best_adv.index_select(0, todo))
        best_adv.index_copy_(0, todo, taken)
        steps_used.index_add_(0, todo, reached.long() * steps)
        non_finite.index_copy_(0, todo, non_finite.index_select(0, todo) | (reached & ~finite[rows]))


def _short_eps(eps: float | torch.Tensor) -> str:
    return f"{eps:.5f}" if isinstance(eps, float) else f"tensor{tuple(eps.shape)}"
