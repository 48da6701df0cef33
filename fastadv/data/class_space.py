"""How a data set's classes map to a model's outputs, so that a label is never compared with a
prediction from another class space (an ImageNet-A folder's 200 sorted sub-folders are not the
first 200 ImageNet classes).

- Folders named by WordNet IDs against a 1000-output model: the ImageNet-1k indices
  (fastadv/data/imagenet.py).
- Folders named 0, 1, ... (integers below the model's outputs): those outputs.
- A class map (a dict {name: output}, a list of names in output order, or a file of either, see
  `read_class_map`): any other label space.
- Otherwise the labels are the outputs only when the data has as many classes as the model has
  outputs (today's rule for CIFAR-10 against a 10-class model); anything else is a ValueError
  naming class_map, never a number.

A data set covering only some of the model's classes (ImageNet-A, -R) is scored as their papers
do: the logits restricted to the classes present (ImageNet-A's ``indices_in_1k``), labels being
positions among them; ``all_classes=True`` scores over every output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from .imagenet import imagenet_classes, imagenet_index, is_wordnet_id


class RestrictedLogits(torch.nn.Module):
    """`model`'s logits at the columns `outputs` only (in that order): the model of a data set
    that covers some of its classes. Wraps any callable model (TorchScript, torch.export, a
    Module) without changing it; attacks on it take their loss and success over these logits."""

    def __init__(self, model, outputs: list[int]):
        super().__init__()
        self.model = model
        self.outputs = list(outputs)
        self._index: dict[torch.device, torch.Tensor] = {}  # per device, made once (CUDA graphs replay it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        index = self._index.get(logits.device)
        if index is None:
            index = self._index[logits.device] = torch.tensor(self.outputs, device=logits.device)
        return logits.index_select(1, index)


@dataclass(frozen=True)
class ClassSpace:
    """The data's classes in the model's output space.

    names: the data's class names (label i is names[i]). outputs: the model's output count.
    model_index: int64 [len(names)], the model output of each data label. scored: the outputs
    the evaluation scores (sorted), or None for all of them. how: how the match was made."""

    names: list[str]
    outputs: int
    model_index: np.ndarray
    scored: list[int] | None
    how: str

    @property
    def classes(self) -> int:
        """The number of classes scored (the confusion matrices' size)."""
        return self.outputs if self.scored is None else len(self.scored)

    def positions(self) -> np.ndarray:
        """int64 [len(names)]: each data label's position among the scored outputs."""
        if self.scored is None:
            return self.model_index
        where = {output: position for position, output in enumerate(self.scored)}
        return np.array([where[int(i)] for i in self.model_index], dtype=np.int64)

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        """The data's labels as positions among the scored outputs (the same device)."""
        if self.how == "identity":
            return labels
        return torch.as_tensor(self.positions(), device=labels.device)[labels]

    def wrap(self, model):
        """The model the evaluation scores and attacks: `model` itself, or its restriction to
        the scored outputs (`model` is not changed)."""
        return model if self.scored is None else RestrictedLogits(model, self.scored)

    def scored_names(self) -> list[str]:
        """Each scored output's name, by position: the data's class mapped to it, else the
        output's index (a model output no class of the data maps to)."""
        names = [str(output) for output in (range(self.outputs) if self.scored is None else self.scored)]
        for name, position in zip(self.names, self.positions(), strict=True):
            names[int(position)] = name
        return names

    def describe(self) -> dict:
        """The report's record: how labels were matched, the outputs scored, each class's output."""
        return {
            "matched_by": self.how,
            "model_outputs": self.outputs,
            "restricted": self.scored is not None,
            "scored_outputs": self.classes,
            "model_index": {name: int(i) for name, i in zip(self.names, self.model_index, strict=True)},
        }


_HOW = {
    "identity": "data labels are the model's outputs",
    "imagenet-1k": "WordNet-ID folders mapped to ImageNet-1k indices",
    "indices": "folder names are the model's output indices",
    "class map": "class map",
}


def summary(record: dict | None) -> str | None:
    """One line saying how a report's classes were matched (`ClassSpace.describe`'s record), or
    None when the labels simply are the model's outputs."""
    if not record or record["matched_by"] == "identity" and not record["restricted"]:
        return None
    line = f"classes: {_HOW.get(record['matched_by'], record['matched_by'])}"
    if record["restricted"]:
        line += (f"; logits restricted to the {record['scored_outputs']} classes present of the model's "
                 f"{record['model_outputs']} (--all-classes scores every output)")  # fmt: skip
    return line


def read_class_map(spec) -> dict[str, int]:
    """{class name: model output} from a dict, a list of names in output order, or a file: JSON
    (either of those) or text, one class a line, "name index" or just "name" (its line number,
    from 0, is its output). Blank lines and lines starting with # are skipped.

    Raises ValueError naming class_map: unreadable file, a malformed line, an index that is not a
    non-negative integer, a name given twice."""
    if isinstance(spec, (str, os.PathLike)):
        spec = _read_file(os.fspath(spec))
    if isinstance(spec, (list, tuple)):
        if len(set(map(str, spec))) != len(spec):
            raise ValueError("class_map: a class name is listed twice")
        return {str(name): index for index, name in enumerate(spec)}
    if not isinstance(spec, dict):
        raise TypeError(f"class_map must be a file path, a dict {{name: index}} or a list of names, "
                        f"got {type(spec).__name__}")  # fmt: skip
    mapping = {}
    for name, index in spec.items():
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"class_map: the index of class {name!r} must be a non-negative integer, got {index!r}")
        mapping[str(name)] = int(index)
    return mapping


def _read_file(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"class_map: cannot read {path} ({error})") from None
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"class_map: {path} is not valid JSON ({error})") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    parts = [(n, line.split()) for n, line in lines]
    if all(len(p) == 1 for _, p in parts):
        return [p[0] for _, p in parts]
    mapping = {}
    for n, p in parts:
        if len(p) != 2 or not p[1].isdigit():
            raise ValueError(f"class_map: {path} line {n}: expected 'name index' or one name per line, "
                             f"got {' '.join(p)!r}")  # fmt: skip
        if p[0] in mapping:
            raise ValueError(f"class_map: {path} line {n}: class {p[0]!r} given twice")
        mapping[p[0]] = int(p[1])
    return mapping


def resolve(names: list[str] | None, labels: np.ndarray, outputs: int, *, class_map=None,
            all_classes: bool = False) -> ClassSpace:  # fmt: skip
    """The class space of data whose classes are `names` (None: unnamed, labels 0..K-1) and
    whose labels are `labels`, scored by a model with `outputs` outputs.

    Raises ValueError naming class_map when the data's classes cannot be matched to the outputs,
    and naming data when an unnamed data set's label lies outside them."""
    if class_map is not None:
        mapping = read_class_map(class_map)
        names = names if names else [str(label) for label in range(int(labels.max()) + 1 if labels.size else 0)]
        present = names if names else []
        missing = [name for name in present if name not in mapping]
        if missing:
            raise ValueError(f"class_map: no index for the data's class(es) {_some(missing)}")
        index = np.array([mapping[name] for name in names], dtype=np.int64)
        how = "class map"
    elif not names:
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= outputs):
            raise ValueError(f"data: labels must lie in [0, {outputs}) for a model with {outputs} outputs; "
                             f"found {int(labels.min())}..{int(labels.max())}")  # fmt: skip
        return ClassSpace([str(i) for i in range(outputs)], outputs, np.arange(outputs), None, "identity")
    elif outputs == len(imagenet_classes()) and all(is_wordnet_id(name) for name in names):
        known = imagenet_index()
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"class_map: the WordNet IDs {_some(unknown)} are not ImageNet-1k classes; "
                             "give a class map for them")  # fmt: skip
        index, how = np.array([known[name] for name in names], dtype=np.int64), "imagenet-1k"
    elif all(name.isdigit() and int(name) < outputs for name in names):
        index, how = np.array([int(name) for name in names], dtype=np.int64), "indices"
        if np.array_equal(index, np.arange(outputs)):
            how = "identity"
    elif len(names) == outputs:  # the names in the model's order, as every run before class spaces assumed
        index, how = np.arange(outputs), "identity"
    else:
        raise ValueError(f"class_map: the data's {len(names)} classes ({_some(names)}) cannot be matched to the "
                         f"model's {outputs} outputs; give a class map (JSON {{name: index}} or one name per line "
                         "in the model's order)")  # fmt: skip
    outside = index[(index < 0) | (index >= outputs)]
    if outside.size:
        raise ValueError(f"class_map: index {int(outside[0])} lies outside the model's {outputs} outputs")
    scored = sorted(set(index.tolist()))
    full = all_classes or len(scored) == outputs
    return ClassSpace(list(names), outputs, index, None if full else scored, how)


def _some(names: list[str], shown: int = 5) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
