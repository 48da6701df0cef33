"""Resuming an evaluation: its state file (the sums after the last finished batch, and after each
AutoAttack stage the batch's record), and the fingerprints of the model and the data that tell a
state of this evaluation from another's."""

from __future__ import annotations

import os

import torch

from ..checkpoint import fingerprint, save_atomic
from ..checkpoint import load as load_checkpoint
from ..data import Selection, TensorSource
from .sums import Sums


def check_state_path(state_path) -> None:
    """state_path names a file that exists or can be created: not a folder, nor under a file."""
    if state_path is None:
        return
    if not isinstance(state_path, (str, os.PathLike)):
        raise TypeError(f"state_path must be a file path (str), got {type(state_path).__name__}")
    path = os.fspath(state_path)
    if os.path.isdir(path):
        example = os.path.join(path, "eval-state.pt")
        raise ValueError(f"state_path: {path} is a folder; give a file in it, e.g. {example}")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):  # the folders save_atomic would create
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"state_path: {ancestor} is a file, so {path} cannot be created under it")


def load_state(path: str | None, settings: dict, identity: dict) -> dict:
    """The state saved at `path` ({} when there is none): its "sums", "next_batch", "skipped"
    and, for a batch stopped mid-way, "partial". ValueError when it is another evaluation's
    (other settings, model or data: resuming would mix two evaluations)."""
    if path is None or not os.path.exists(path):
        return {}
    saved = load_checkpoint(path, "evaluation")
    expected, found = {**settings, **identity}, {**saved["settings"], **saved.get("identity", {})}
    changed = [key for key in expected if found.get(key) != expected[key]]
    if changed:
        raise ValueError(f"state_path: {path} belongs to another evaluation (changed: {', '.join(changed)})")
    return saved


def save_state(path: str, settings: dict, identity: dict, sums: dict, next_batch: int, skipped: list,
               partial: dict | None = None) -> None:  # fmt: skip
    """Writes the state atomically: the sums after the batches before `next_batch`, the images
    skipped so far, and `partial`, the record of batch `next_batch` stopped mid-way (see stages)."""
    state = {"kind": "evaluation", "settings": settings, "identity": identity, "sums": sums,
             "next_batch": next_batch, "skipped": skipped}  # fmt: skip
    if partial is not None:
        state["partial"] = partial
    save_atomic(state, path)


def stage_saver(rank_state: str | None, attacks: list[str], settings: dict, identity: dict, sums: Sums,
                batch_index: int, skipped: list):  # fmt: skip
    """What saves the state after each AutoAttack stage of batch `batch_index`: the sums and
    skipped images as the batch found them (it runs again on resume) with the batch's record.
    None without a state file or an AutoAttack (the other attacks' batches are short)."""
    if rank_state is None or "autoattack" not in attacks:
        return None
    base, kept = {key: value.clone() for key, value in sums.t.items()}, list(skipped)

    def save(record: dict) -> None:
        save_state(rank_state, settings, identity, base, batch_index, kept, partial=record)

    return save


def data_fingerprint(selection: Selection) -> str:
    """What the data is, for resuming: tensors in memory by their bytes (a SHA-256), a streamed
    data set by its files (names, sizes, times; see Source.fingerprint), never read whole."""
    source = selection.source
    if isinstance(source, TensorSource) and selection.indices is None:
        return fingerprint((("images", source.images), ("labels", source.tensor_labels)))
    if isinstance(source, TensorSource):
        index = torch.as_tensor(selection.indices, dtype=torch.long)
        return fingerprint((("images", source.images[index.to(source.images.device)]),
                            ("labels", source.tensor_labels[index.to(source.tensor_labels.device)])))  # fmt: skip
    return selection.fingerprint()


def fingerprints(model: torch.nn.Module, selection: Selection) -> dict[str, str]:
    """Fingerprints of the model's weights (parameters and buffers) and of the data."""
    return {"model": fingerprint(model.state_dict().items()), "data": data_fingerprint(selection)}
