"""Atomic checkpoint files and the random-number state they carry.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one (`os.replace` is atomic on POSIX and Windows): a crash while saving leaves the
previous checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import re
import socket
import tempfile
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not what was expected."""


def _temporary_prefix() -> str:
    """The name a temporary file starts with: it says which process (and machine) writes it."""
    return f".tmp-{os.getpid()}@{socket.gethostname()}-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str) -> list[str]:
    """Removes the temporary files (.tmp-*.pt) that saves interrupted by a kill left in
    `folder`: those of a process of this machine that is gone, and those of the old naming
    without a writer. Files of a live process, or of another machine, are kept. Returns the
    paths removed."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), ".tmp-*.pt")):
        name = os.path.basename(path)
        match = re.match(r"\.tmp-(\d+)@", name)
        if match and (not name.startswith(f"{match.group(0)}{socket.gethostname()}-") or _alive(int(match.group(1)))):
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists (another user's), or the platform cannot tell: keep its file
        return True
    return True


def save_atomic(obj: Any, path: str) -> None:
    """torch.save(obj) to `path` atomically (temporary file, fsync, rename). The file gets the
    permissions of a file the user creates (0666 less the umask), as the JSON files do."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(), suffix=".pt", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str, kind: str) -> dict:
    """The dict saved at `path`, which must carry ``"kind": kind``; CheckpointError otherwise."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a file (expected a fastadv {kind} file)")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        # weights_only: loading never runs code from the file (checkpoints hold tensors and plain data)
        with warnings.catch_warnings():  # a damaged file's warnings: the error below says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if kind == "model" and isinstance(obj, dict) and "kind" not in obj and all(isinstance(v, torch.Tensor)
                                                                              for v in obj.values()):  # fmt: skip
        raise CheckpointError(
            f"{path}: a plain state_dict, not a model: give its architecture as a module:callable factory and these "
            f"weights (fastadv eval --model torchvision.models:resnet18 --weights {path}; in Python "
            f"fastadv.models.load('torchvision.models:resnet18', weights={path!r}))"
        )
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a fastadv {kind} file, found {found!r}")
    return obj


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]], *, values: bool = True) -> str:
    """The SHA-256 (hex) of named tensors: their names, dtypes and shapes and, with `values`,
    their bytes. It identifies a model's weights (``model.state_dict().items()``), an
    architecture (``values=False``) or a data set, on any device (read in chunks of 64 MiB)."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        if not values:
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, (64 << 20) // max(flat.element_size(), 1))
        for start in range(0, flat.numel(), step):
            chunk = flat[start : start + step].cpu().contiguous()
            digest.update(chunk.view(torch.uint8).numpy())
    return digest.hexdigest()


def rng_state() -> dict:
    """Every random-number state a training run draws from."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached": float(cached)}  # fmt: skip
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
