"""The layers of docs/DESIGN.md only call down: every import inside the package (at module level
or in a function) must name a module of the importer's layer or of a layer below it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastadv"

# Top to bottom, as docs/DESIGN.md lists them. A module is in the first layer one of whose
# prefixes names it; "fastadv" itself (the package's __init__, which re-exports from every layer)
# is above all of them, so no module of the package may import it.
LAYERS = [
    ("cli and demo", ["fastadv.cli", "fastadv.__main__", "fastadv.demo"]),
    ("bench", ["fastadv.bench"]),
    ("train", ["fastadv.train"]),
    ("recipes", ["fastadv.recipes"]),
    ("evaluate", ["fastadv.evaluate", "fastadv.evaluation", "fastadv.eval_stages", "fastadv.plots"]),
    ("models and data", ["fastadv.models", "fastadv.model_formats", "fastadv.datasets"]),
    ("streamed data", ["fastadv.data"]),
    ("attacks", ["fastadv.attacks"]),
    ("defenses", ["fastadv.defenses"]),
    ("ops", ["fastadv.ops", "fastadv._checks"]),
    ("backends", ["fastadv.backends", "fastadv._C"]),
    (
        "utilities",
        [
            "fastadv._validate",
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


def test_every_module_has_a_layer():
    for path in MODULES:
        layer_of(module_name(path))


def test_the_design_lists_the_layers():
    design = (PACKAGE.parent / "docs" / "DESIGN.md").read_text()
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            if prefix in ("fastadv._C", "fastadv.__main__", "fastadv._version"):
                continue
            shown = prefix.replace("fastadv.", "fastadv/").replace(".", "/")
            assert shown in design or shown + ".py" in design or prefix.rpartition(".")[2] in design, prefix
