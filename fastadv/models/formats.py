"""Models in the formats people save them in, besides fastadv's own model files (files.py):
TorchScript archives, torch.export programs (.pt2), and `module:callable` factories given their
weights as a state_dict (.pt/.pth) or a .safetensors file. (What every format shares, the
normalization and the logits check, is in interface.py.)

Security: state_dicts are read with ``torch.load(weights_only=True)`` (tensors and plain data;
no object of the file is unpickled into code) and .safetensors files hold tensors only.
TorchScript archives and torch.export programs are programs: loading one runs no Python of the
file, but evaluating it runs its graph, so load only archives you trust. A factory is code you
name (it is imported); it is called with weights=None / pretrained=False, and a download it
tries anyway is refused (nothing is ever fetched from the network).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator

import torch
from torch import nn

from .. import checks as check
from ..checkpoint import CheckpointError

# "package.module:callable" (the callable may be an attribute path, "module:Class.build")
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_FEW = 3  # keys named in a message, of each kind


class ModelError(CheckpointError):
    """A model that cannot be loaded (a missing or unreadable file, a factory that does not
    import, weights that do not fit) or that does not return logits. A ValueError; its message
    is one line naming the file or factory."""


class MissingWeights(ModelError):
    """A factory given no weights (its model would have random weights) without
    allow_random_weights. `spec`: the factory. Front ends say it in their own terms."""

    def __init__(self, spec: str):
        self.spec = spec
        super().__init__(f"{spec}: no weights given, so the model would have random weights: give them "
                         f"(load({spec!r}, weights='model.pth')) or pass allow_random_weights=True")  # fmt: skip


class WeightsWithoutModel(ModelError):
    """A weights-only file (.safetensors) given as the model. `path`: the file. Front ends say
    it in their own terms."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"{path}: a safetensors file holds weights, not a model: give its architecture too, "
                         f"load('module:callable', weights={path!r})")  # fmt: skip


class RandomWeightsWarning(UserWarning):
    """A factory's model built with random weights (allow_random_weights=True, no weights)."""


def is_factory(spec: str) -> bool:
    """`spec` names a `module:callable` factory (and is not a file that exists)."""
    return bool(_FACTORY.fullmatch(spec)) and not os.path.exists(spec)


def file_kind(path: str) -> str:
    """What the file at `path` holds, from its contents: "torchscript", "export" (a
    torch.export program), "safetensors" or "torch" (a torch.save file: fastadv's model files
    and state_dicts). ModelError when it is missing or none of these."""
    if os.path.isdir(path):
        raise ModelError(
            f"{path}: a folder, not a model file (expected a fastadv model file, a TorchScript or "
            "torch.export archive, a .safetensors or torch.save file, or a module:callable factory)"
        )
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"  # torch.load says it is damaged
        if any("/code/__torch__/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        if any(name.endswith("/models/model.json") or "serialized_exported_program" in name for name in names):
            return "export"
        return "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= os.path.getsize(path) - 8:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if head[:1] == b"\x80" or head[:2] == b"PK":  # a pickle (torch.save's old format), a damaged zip file
        return "torch"  # torch.load says what is wrong
    raise ModelError(f"{path}: not a model or weights file (expected a fastadv model file, a TorchScript archive, a "
                     "torch.export program, a torch.save state_dict or a .safetensors file)")  # fmt: skip


KIND_NAMES = {"torchscript": "a TorchScript archive", "export": "a torch.export program",
              "safetensors": "a safetensors file", "torch": "a torch.save file"}  # fmt: skip


# ---- TorchScript and torch.export ----------------------------------------------------------------


def load_torchscript(path: str, device: torch.device | str = "cpu") -> nn.Module:
    """The TorchScript archive at `path` (torch.jit.save), on `device`."""
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
            warnings.simplefilter("ignore")
            return torch.jit.load(path, map_location=device)
    except Exception as error:  # a damaged archive raises many types
        raise ModelError(f"{path}: not a readable TorchScript archive ({_one_line(error)})") from None


def load_exported(path: str, device: torch.device | str = "cpu") -> nn.Module:
    """The torch.export program at `path` (torch.export.save) as a module on `device`: one
    image input, exported in eval mode. A program whose batch size is fixed (or bounded) runs
    batches of another size in chunks it takes (see `ExportedModel`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(path)
            if torch.device(device).type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, torch.device(device))
    except Exception as error:
        raise ModelError(f"{path}: not a readable torch.export program ({_one_line(error)})") from None
    inputs = program.graph_signature.user_inputs
    if len(inputs) != 1:
        raise ModelError(f"{path}: a torch.export program with {len(inputs)} inputs; expected one (the images)")
    trained = _train_mode_ops(program)
    if trained:
        raise ModelError(f"{path}: exported in train mode ({trained} uses batch statistics or dropout); export "
                         "the model after model.eval()")  # fmt: skip
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0])
    low, high = _batch_range(program, placeholder.meta["val"].shape[0])
    return ExportedModel(program.module(), low, high)


def _train_mode_ops(program) -> str | None:
    """The first op of the program's graph that runs in train mode (an argument `training` or
    `train` set to True: batch_norm, dropout), or None."""
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for index, argument in enumerate(schema.arguments):
            if argument.name in ("training", "train"):
                value = node.args[index] if index < len(node.args) else node.kwargs.get(argument.name)
                if value is True:
                    return str(node.target)
    return None


def _batch_range(program, size) -> tuple[int, int | None]:
    """The batch sizes the program takes: (fixed, fixed) when it was exported without a dynamic
    batch dim, else the range of its symbol (upper None when unbounded)."""
    if isinstance(size, int):
        return size, size
    bounds = program.range_constraints.get(size.node.expr)
    if bounds is None:
        return 1, None
    low = int(bounds.lower) if bounds.lower.is_Integer else 1
    return max(low, 1), int(bounds.upper) if bounds.upper.is_Integer else None


class ExportedModel(nn.Module):
    """A torch.export program as a module (`program`: ExportedProgram.module()).

    Batch sizes: a program exported with a fixed batch size b takes only b images at a time
    (with a dynamic batch dim bounded to [low, high], only so many). This module splits a batch
    into chunks of at most `high` and pads a short one to at least `low` with copies of its
    last image, whose outputs are dropped: each image's logits, and their gradients, are those
    the program gives it alone (models in eval mode do not mix the images of a batch).

    Mode: the graph runs in the mode it was exported in (eval: load_exported refuses a program
    exported in train mode), so train()/eval() set this module's flag only (a program's module
    refuses them)."""

    def __init__(self, program: nn.Module, low: int = 1, high: int | None = None):
        super().__init__()
        self.program, self.low, self.high = program, low, high

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n >= self.low and (self.high is None or n <= self.high):
            return self.program(x)
        step = self.high if self.high is not None else max(n, 1)
        outputs = []
        for start in range(0, n, step) or [0]:  # (an empty batch: one chunk of padding)
            chunk = x[start : start + step]
            size = chunk.shape[0]
            if size < self.low:
                fill = chunk[-1:].detach() if size else x.new_zeros((1, *x.shape[1:]))
                chunk = torch.cat([chunk, fill.expand(self.low - size, *x.shape[1:])])
            out = self.program(chunk)
            if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != chunk.shape[0]:
                return out  # not logits: check_logits says what it is
            outputs.append(out[:size])
        return torch.cat(outputs)


# ---- factories and their weights ----------------------------------------------------------------


def load_factory(spec: str, weights: str | None = None, *, num_classes: int | None = None,
                 allow_random_weights: bool = False, seed: int = 0) -> nn.Module:  # fmt: skip
    """The model `module:callable` builds, with the state_dict in `weights` (a .pt/.pth
    state_dict or a .safetensors file) loaded into it. The factory is called with
    ``weights=None`` / ``pretrained=False`` where it takes them (nothing is downloaded; a
    download it tries anyway is refused) and ``num_classes`` where it takes it (or **kwargs).
    ``timm:name`` is ``timm.create_model(name, pretrained=False)``.

    Without `weights` the model keeps the factory's random initialisation: MissingWeights
    unless `allow_random_weights`, and then a RandomWeightsWarning. The factory runs with
    torch's global generator seeded by `seed` (and the caller's generator state given back),
    so the same seed builds the same model."""
    module_name, _, attribute = spec.partition(":")
    module = _import(spec, module_name)
    if module_name == "timm":
        factory, kwargs = module.create_model, {"model_name": attribute, "pretrained": False}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
    else:
        factory = module
        for part in attribute.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                raise ModelError(f"{spec}: {module_name} has no {attribute}")
        if not callable(factory):
            raise ModelError(f"{spec}: {attribute} is not callable ({type(factory).__name__}); expected a function or "
                             "class that builds the model")  # fmt: skip
        kwargs = _factory_kwargs(factory, num_classes)
    state = None if weights is None else read_state_dict(weights)  # a bad file fails before the model is built
    if state is None and not check.flag("allow_random_weights", allow_random_weights):
        raise MissingWeights(spec)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "model_name")
    try:
        with _no_downloads(spec), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # (initialisation draws from the global generator: seeded, then given back)
            model = factory(**kwargs)
    except ModelError:
        raise
    except Exception as error:  # the factory's own error, whatever its type
        raise ModelError(f"{spec}: calling it ({shown}) failed: {_one_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}: returned a {type(model).__name__}, expected a torch.nn.Module")
    try:  # how to rebuild it: fastadv's model files of a trained factory model (files.py) name it
        model.fastadv_spec = {"arch": spec, "kwargs": {k: v for k, v in kwargs.items() if k == "num_classes"}}
    except (AttributeError, RuntimeError):  # a module that takes no new attributes (TorchScript): not saved
        pass
    if state is not None:
        load_weights(model, state, weights, spec)
    else:
        warnings.warn(f"{spec}: random weights (no weights given; initialised with seed {seed})", RandomWeightsWarning,
                      stacklevel=3)  # fmt: skip
    return model


# The factories a fastadv model file may name to be rebuilt: importing a module runs its code, and
# a model file is data (it may come from anyone), so only these libraries' model builders qualify.
# A model trained from another factory loads as that factory with the file as its weights.
REBUILT_FACTORIES = ("torchvision.models", "timm")


def rebuilt_from_file(spec: str) -> bool:
    """A model file naming the factory `spec` may rebuild the model through it (REBUILT_FACTORIES)."""
    module_name = spec.partition(":")[0]
    return bool(_FACTORY.fullmatch(spec)) and any(
        module_name == m or module_name.startswith(m + ".") for m in REBUILT_FACTORIES
    )


def _import(spec: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if module_name.partition(".")[0] == missing.partition(".")[0]:
            hint = f" (pip install {missing})" if missing in ("timm", "torchvision") else ""
            raise ModelError(f"{spec}: cannot import {module_name}: {missing} is not installed{hint}") from None
        raise ModelError(f"{spec}: importing {module_name} failed: {_one_line(error)}") from None
    except Exception as error:
        raise ModelError(f"{spec}: importing {module_name} failed: {_one_line(error)}") from None


def _factory_kwargs(factory, num_classes: int | None) -> dict:
    """weights=None and pretrained=False where the factory names them; num_classes where it
    names it or takes **kwargs."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or extension callable: nothing known
        parameters = {}
    named = {name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs: dict = {}
    if "weights" in named:
        kwargs["weights"] = None  # torchvision: no pretrained weights (they would be downloaded)
    if "pretrained" in named:
        kwargs["pretrained"] = False
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    if num_classes is not None and ("num_classes" in named or takes_any):
        kwargs["num_classes"] = num_classes
    return kwargs


@contextlib.contextmanager
def _no_downloads(spec: str) -> Iterator[None]:
    """torch.hub's downloads (torchvision's and timm's pretrained weights) raise ModelError."""
    import torch.hub

    def refuse(url, *args, **kwargs):
        raise ModelError(f"{spec}: the factory tried to download {url}; fastadv never downloads: give the weights "
                         "as a local file (--weights)")  # fmt: skip

    real = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = real


# what a training checkpoint keeps its weights under (fastadv's latest.pt: "model")
_WRAPPING_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state_dict in the file at `path`: a .safetensors file, or a torch.save file read with
    weights_only=True holding a dict of tensors (or one under "state_dict", "model_state_dict"
    or "model", as training checkpoints and fastadv's files keep it). A "module." prefix on
    every key (DataParallel, DistributedDataParallel) is dropped. ModelError when the file is
    missing, unreadable, not a dict of tensors or holds non-finite values."""
    kind = file_kind(path)
    if kind in ("torchscript", "export"):
        raise ModelError(f"{path}: {KIND_NAMES[kind]}, not a state_dict: give it as the model itself")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "safetensors":
                from safetensors.torch import load_file

                obj = load_file(path, device="cpu")
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ModelError(f"{path}: reading it needs the safetensors package (pip install safetensors)") from None
    except Exception as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise ModelError(f"{path}: holds Python objects besides tensors (refused: weights are read with "
                             "weights_only=True); save model.state_dict() instead") from None  # fmt: skip
        raise ModelError(f"{path}: not a readable {'safetensors' if kind == 'safetensors' else 'state_dict'} file "
                         f"({type(error).__name__})") from None  # fmt: skip
    if isinstance(obj, dict) and obj.get("kind") == "model" and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a fastadv model file
    elif isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPING_KEYS if isinstance(obj.get(k), dict)), None)
        obj = obj if inner is None else inner
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):  # fmt: skip
        found = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {_few(list(obj))}"
        raise ModelError(f"{path}: expected a state_dict (a dict of parameter names to tensors), found {found}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    for name, tensor in obj.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{path}: {name} holds non-finite values (NaN or infinity)")
    return obj


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str, spec: str) -> None:
    """Loads `state` into `model` (strictly), or ModelError naming the missing and unexpected
    keys and the shape mismatches (a few of each, and how many)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {_shape(state[k])} in the file but {_shape(expected[k])} in the model"
                  for k in expected if k in state and state[k].shape != expected[k].shape]  # fmt: skip
    problems = [f"{len(keys)} {what if len(keys) == 1 else plural} ({_few(keys)})" for keys, what, plural in (
                (missing, "missing key", "missing keys"), (unexpected, "unexpected key", "unexpected keys"),
                (mismatched, "shape mismatch", "shape mismatches")) if keys]  # fmt: skip
    if problems:
        raise ModelError(f"{path}: the weights do not fit {spec}: {'; '.join(problems)}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ModelError(f"{path}: the weights do not fit {spec} ({_one_line(error)})") from None


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(n) for n in t.shape) or "scalar"


def _few(items: list) -> str:
    return ", ".join(str(i) for i in items[:_FEW]) + (", ..." if len(items) > _FEW else "")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__
