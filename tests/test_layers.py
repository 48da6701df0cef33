"""The layers of docs/DESIGN.md only call down: every import inside the package (at module level
or in a function) must name a module of the importer's layer or of a layer below it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastadv"

# Top to bottom, as docs/DESIGN.md lists them. A module is in the first layer one of whose
# prefixes names it; "fastadv" itself (the package's __init__, which re-exports from every layer)
# is above all of them, so no module of the package may import it. No exception. The `fastadv`
# command's dispatcher is on top; the two front ends share a layer below it, and FRONT_ENDS says
# that neither imports the other (test_no_front_end_imports_another); what both need is below
# them: the option parsing (fastadv.options) and the library.
LAYERS = [
    ("the fastadv command", ["fastadv.__main__"]),
    ("front ends", ["fastadv.cli", "fastadv.demo"]),
    ("options", ["fastadv.options"]),
    ("bench", ["fastadv.bench"]),
    ("train", ["fastadv.train", "fastadv.digits_models"]),
    ("recipes", ["fastadv.recipes"]),
    ("evaluation", ["fastadv.evaluation"]),
    ("models", ["fastadv.models"]),
    ("data", ["fastadv.data"]),
    ("attacks", ["fastadv.attacks"]),
    ("defenses", ["fastadv.defenses"]),
    ("ops", ["fastadv.ops", "fastadv.op_checks"]),
    ("backends", ["fastadv.backends", "fastadv._C"]),
    (
        "utilities",
        [
            "fastadv.checks",
            "fastadv._environment",
            "fastadv._distributed",
            "fastadv._cascade",
            "fastadv._version",
            "fastadv.checkpoint",
        ],
    ),
]


def layer_of(module: str) -> int:
    """The index of the module's layer in LAYERS (-1 for the package root)."""
    if module == "fastadv":
        return -1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/DESIGN.md")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of a fastadv module in the file. For
    `from . import x` the module is `package.x` when x is a module, else the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "fastadv"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "fastadv":
                target = node.module
            else:
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                path_stem = PACKAGE.parent / Path(*candidate.split("."))
                # a .py file, a package, or a compiled extension (fastadv/_C.cpython-*.so)
                is_module = (
                    path_stem.with_suffix(".py").exists()
                    or path_stem.is_dir()
                    or any(path_stem.parent.glob(path_stem.name + ".*.so"))
                    or candidate == "fastadv._C"
                )
                found.append((node.lineno, candidate if is_module else target))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_only_call_down(path):
    importer = module_name(path)
    if importer == "fastadv":
        return  # the package root re-exports the public API of every layer
    own = layer_of(importer)
    upward = [
        f"line {line}: {target} ({LAYERS[layer_of(target)][0] if layer_of(target) >= 0 else 'the package root'})"
        for line, target in imported_modules(path)
        if layer_of(target) < own
    ]
    assert not upward, f"{importer} ({LAYERS[own][0]} layer) imports from layers above it:\n" + "\n".join(upward)


FRONT_ENDS = ["fastadv.cli", "fastadv.demo"]


def _front_end(module: str) -> str | None:
    return next((f for f in FRONT_ENDS if module == f or module.startswith(f + ".")), None)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_front_end_imports_another(path):
    """The command line (fastadv.cli) and the page (fastadv.demo, with its `fastadv demo`
    sub-command) are thin front ends over the library: neither imports the other, so each can
    change, or be left out, without the other knowing; the dispatcher above them adds both."""
    own = _front_end(module_name(path))
    crossing = [
        f"line {line}: {target}"
        for line, target in imported_modules(path)
        if own is not None and _front_end(target) not in (None, own)
    ]
    assert not crossing, f"{module_name(path)} (front end {own}) imports another front end:\n" + "\n".join(crossing)


def test_every_module_has_a_layer():
    for path in MODULES:
        layer_of(module_name(path))


def test_the_design_lists_the_layers():
    design = (PACKAGE.parent / "docs" / "DESIGN.md").read_text()
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            if prefix in ("fastadv._C", "fastadv._version"):
                continue
            shown = prefix.replace("fastadv.", "fastadv/").replace(".", "/")
            assert shown in design or shown + ".py" in design or prefix.rpartition(".")[2] in design, prefix


# ---- private names stay inside their package ----

# Top-level private modules every package may still import, and why: the package's shared
# utilities, private to fastadv as a whole.
SHARED_PRIVATE = {
    "fastadv._environment": "device names, shared by the report, the CLI and the benchmarks",
    "fastadv._distributed": "torchrun set-up, shared by evaluation and training",
    "fastadv._cascade": "AutoAttack's cascade, shared by AutoAttack and evaluate",
    "fastadv._version": "the version string",
    "fastadv._C": "the compiled extension (its name is setup.py's)",
}


def _unit(module: str) -> str:
    """The package a module belongs to: fastadv.attacks for fastadv.attacks.apgd, fastadv.evaluate
    for itself (a top-level module is a unit of its own), fastadv for the package root."""
    return ".".join(module.split(".")[:2])


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_crossings(path: Path) -> list[str]:
    """Every `_private` module or attribute of another package that the file imports or reads
    from a module it imported (`module._name`), with its line."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, str] = {}  # local name -> the fastadv module it is bound to
    found = []

    def foreign(module: str) -> bool:
        return _unit(module) != _unit(importer) and module not in SHARED_PRIVATE

    def check_module(line: int, module: str) -> None:
        parts = module.split(".")
        if any(_private(p) for p in parts[1:]) and foreign(module):
            found.append(f"line {line}: module {module}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fastadv":
                    check_module(node.lineno, alias.name)
                    if alias.asname:
                        bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "fastadv":
                target = node.module
            else:
                continue
            check_module(node.lineno, target)
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                stem = PACKAGE.parent / Path(*candidate.split("."))
                if stem.with_suffix(".py").exists() or stem.is_dir() or any(stem.parent.glob(stem.name + ".*.so")):
                    check_module(node.lineno, candidate)
                    bound[alias.asname or alias.name] = candidate
                elif _private(alias.name) and foreign(target):
                    found.append(f"line {node.lineno}: {alias.name} from {target}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            module = bound[node.value.id]
            if _private(node.attr) and foreign(module):
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr} ({module})")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_private_name_crosses_a_package(path):
    crossings = private_crossings(path)
    assert not crossings, f"{module_name(path)} uses private names of other packages:\n" + "\n".join(crossings)
