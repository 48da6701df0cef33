"""Whether the model is being run by an adaptive attack: the switch the defences read.

An attack made with ``adaptive=True`` runs its model inside :func:`adaptive_gradients`; a
transform of :mod:`fastadv.defenses.transforms` then builds its backward pass for the attack
(BPDA's straight-through gradient) instead of its own. The switch is a `contextvars.ContextVar`:
each thread (and asyncio task) sees its own value, so an adaptive attack in one thread never
changes what a model computes in another, and the value is restored when the block exits, also
when it raises. It is read at forward time only: the backward pass (which PyTorch may run in
another thread) follows the graph the forward built.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_ADAPTIVE = contextvars.ContextVar("fastadv_adaptive_gradients", default=False)


@contextmanager
def adaptive_gradients(on: bool = True) -> Iterator[None]:
    """Within the block (in this thread), defences build the backward pass an adaptive attack
    uses when `on`, their own when not (a nested block may switch it back)."""
    token = _ADAPTIVE.set(bool(on))
    try:
        yield
    finally:
        _ADAPTIVE.reset(token)


def adaptive_active() -> bool:
    """True inside ``adaptive_gradients(True)`` in this thread."""
    return _ADAPTIVE.get()
