"""PGD with the L-inf norm (Madry et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch

from .gradient import GradientAttack


class PGD(GradientAttack):
    r"""Projected gradient descent in the L-inf ball: "Towards Deep Learning Models Resistant to
    Adversarial Attacks", Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083.

    Distance: L-inf. Each step moves every pixel by ``alpha`` along the sign of the loss gradient,
    projects onto the ``eps`` ball around the clean image and clamps to ``[lower, upper]``, in one
    fused op.

    Arguments (defaults as torchattacks):
        model (nn.Module or callable): maps images [B, ...] to logits [B, K].
        eps (float or tensor [B]): radius of the ball, in pixel units. Default: 8/255.
        alpha (float or tensor [B]): step size. Default: 2/255.
        steps (int): number of steps. Default: 10.
        random_start (bool): start from a uniform draw in the ball. Default: True.
        **options: shared by every attack, see below.

    Options (keyword-only):
        targeted (bool, False): labels are target classes to reach.
        restarts (int, 1): runs from new random starts on the samples not yet fooled; the best
            result per sample is kept. Needs random_start.
        loss ("ce" | "margin", "ce"): cross-entropy, or Carlini and Wagner's logit margin.
        early_stop (bool, False): a sample leaves the batch at the first iterate that fools the
            model (the batch is compacted, so finished samples cost nothing).
        early_stop_every (int, 1): compact every k steps only (one host sync each; on a GPU the
            sync, not the work, is what a compaction costs); in between, fooled samples are frozen
            where they were fooled, so the results are those of k = 1.
        cuda_graph (bool, False): on a GPU, capture one step (forward, input-gradient backward,
            fused step) in a CUDA graph at the first call with a given shape and replay it for
            every step after; same images as uncaptured in float32. Applies to ``attack(images,
            labels)`` without early_stop or restarts and to steps without state (not MI-FGSM);
            otherwise, on a CPU, or when capture fails (a model that syncs with the host), the
            steps run uncaptured with one RuntimeWarning per reason. ``attack.graph_status``
            says which path the last call took.
        lower, upper (float or tensor, 0.0 and 1.0): valid pixel range; tensors may be per
            channel ([1, C, 1, 1]).
        mean, std (sequence or tensor, None): the model expects (x - mean) / std; the attack
            works in pixel space, so eps is in pixel units.
        amp (None | torch.float16 | torch.bfloat16): run the model under autocast.
        channels_last (bool | "auto", False): True: attack 4-d images in channels_last layout
            (and return them in it), the model's nn.Conv2d weights held in channels_last for the
            attack (given back as they were), so that convolutions run in that layout. "auto"
            (AutoAttack's default): True when the images are 4-d on a CPU and the model has
            convolutions, else False. Logits then differ from the contiguous run's in
            the last bits (another summation order).
        backend ("auto" | "torch" | "triton" | "cpu" | "cuda"): which fused ops to run.
        generator (torch.Generator, None): for reproducible random starts.
        model_mode ("eval" | "train" | "unchanged", "eval"): the mode the model runs in.
        adaptive (bool, False): run the model as an adaptive attack does: input transformations
            of fastadv.defenses use BPDA's straight-through backward pass (docs/defenses.md).
        eot_samples (int, 1): each step's gradient is the mean over this many forward and
            backward passes (expectation over transformation, for randomized defences).

    Shape:
        images: [B, ...] float32/float16/bfloat16 in [lower, upper]; labels: [B] int class indices.
        ``attack(images, labels)`` returns adversarial images of the same shape and dtype: the
        final iterate, as torchattacks does (with early_stop or restarts, as ``run``).
        ``attack.run(images, labels)`` returns an AttackResult with per-sample success, loss and
        steps; it evaluates the final iterate (one forward pass more) and never returns a sample
        unfooled that fooled the model at some step (the latest adversarial iterate is kept).

    Raises:
        TypeError / ValueError naming the argument: bad options, images outside [lower, upper],
        labels of the wrong shape, dtype or range, a model that does not return [B, K] logits.
        :class:`fastadv.UnsupportedOption` (both a TypeError and a ValueError) naming the
        keyword and the attack, for a keyword the attack does not take (``supported_options``).
        The model (mode, requires_grad, buffers, .grad) and the caller's tensors are unchanged
        afterwards, also when the attack raises.

    Example:
        >>> attack = fastadv.PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
        >>> adv_images = attack(images, labels)
    """

    norm = "linf"

    def __init__(
        self,
        model: Any,
        eps: float | torch.Tensor = 8 / 255,
        alpha: float | torch.Tensor = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        **options: Any,
    ):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, **options)
