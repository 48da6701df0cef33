"""The per-sample attack losses against their textbook forms, values and gradients.

The margin loss marks the label's logit with one scatter of -inf; these tests pin it, bit for
bit, to the one-hot and masked_fill form it replaced (and to Carlini and Wagner's definition),
in every dtype the attacks see under autocast, including ties and large logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastadv.attacks._losses import per_sample_loss, targeted_dlr

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def one_hot_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The form the margin loss replaced. Not support.plain_attacks.plain_margin: its `max` sends a tie's
    gradient to one logit, where `amax` (both forms here) splits it."""
    logits = logits.float()
    label_mask = F.one_hot(labels, logits.shape[1]).bool()
    label_logit = logits.masked_fill(~label_mask, 0).sum(1)
    best_other = logits.masked_fill(label_mask, float("-inf")).amax(1)
    return best_other - label_logit


def random_logits(seed: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 65, (1,), generator=gen))
    classes = int(torch.randint(3, 1001, (1,), generator=gen))
    scale = float(10 ** torch.empty(1).uniform_(-3, 4, generator=gen))
    logits = (torch.randn(batch, classes, generator=gen) * scale).to(dtype)
    if seed % 3 == 0:  # ties: the label's logit equals the best other one
        logits[:, 1] = logits[:, 0]
    labels = torch.randint(0, classes, (batch,), generator=gen)
    if seed % 3 == 0:
        labels[: batch // 2] = 0
    return logits, labels


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(40))
def test_margin_equals_the_one_hot_form_bit_for_bit(seed, dtype):
    logits, labels = random_logits(seed, dtype)
    got = per_sample_loss("margin", logits, labels)
    assert got.dtype == torch.float32
    assert torch.equal(got, one_hot_margin(logits, labels))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_margin_gradient_equals_the_one_hot_form(dtype):
    for seed in range(10):
        logits, labels = random_logits(seed, dtype)  # ties too: amax splits the gradient alike
        a = logits.clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        per_sample_loss("margin", a, labels).sum().backward()
        one_hot_margin(b, labels).sum().backward()
        assert torch.equal(a.grad, b.grad)


def test_margin_is_carlini_wagner_f6_without_kappa():
    logits = torch.tensor([[1.0, 5.0, 3.0], [2.0, -1.0, 0.5], [7.0, 7.0, 1.0]])
    labels = torch.tensor([1, 0, 0])
    assert per_sample_loss("margin", logits, labels).tolist() == [3.0 - 5.0, 0.5 - 2.0, 0.0]


def test_margin_leaves_the_callers_logits_alone():
    logits, labels = random_logits(4, torch.float32)
    before = logits.clone()
    per_sample_loss("margin", logits, labels)
    per_sample_loss("dlr", logits, labels)
    assert torch.equal(logits, before)


def test_dlr_divides_the_margin_by_the_top1_top3_gap():
    logits = torch.tensor([[4.0, 1.0, 2.0, 0.0], [0.0, 3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2])
    got = per_sample_loss("dlr", logits, labels)
    expected = torch.tensor([(2.0 - 4.0) / (4.0 - 1.0), (3.0 - 1.0) / (3.0 - 1.0)])
    torch.testing.assert_close(got, expected)
    # invariant to the logits' scale and shift, as Croce and Hein designed it
    torch.testing.assert_close(per_sample_loss("dlr", 7.5 * logits + 3.0, labels), expected)


def test_targeted_dlr_matches_its_definition():
    logits = torch.tensor([[4.0, 1.0, 2.0, 0.0, -1.0]])
    labels, targets = torch.tensor([0]), torch.tensor([2])
    expected = (2.0 - 4.0) / (4.0 - 0.5 * (1.0 + 0.0))
    torch.testing.assert_close(targeted_dlr(logits, labels, targets), torch.tensor([expected]))


def test_cross_entropy_is_torchs():
    logits, labels = random_logits(5, torch.float32)
    assert torch.equal(per_sample_loss("ce", logits, labels), F.cross_entropy(logits, labels, reduction="none"))
