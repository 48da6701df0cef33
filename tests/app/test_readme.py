"""The examples of README.md and docs/*.md run as written, so that they cannot drift from the code.

Python blocks run in a namespace where `model`, `images` and `labels` (and `x`, `y`) are the digits
CNN and a small test batch, which is what the documents say those names stand for. Every `fastadv`
command of a bash block must parse with the real argument parser; the README's own commands also
run, in a temporary folder (slow)."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastadv.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), flags=re.S | re.M)


def fastadv_commands(block: str) -> list[list[str]]:
    """The argument lists of the block's `fastadv ...` and `torchrun ... -m fastadv ...` lines."""
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["fastadv"]:
            commands.append(words[1:])
        elif words[:1] == ["torchrun"] and "fastadv" in words:
            commands.append(words[words.index("fastadv") + 1 :])
    return commands


def _examples(language: str, documents=DOCUMENTS):
    return [
        pytest.param(block, id=f"{path.relative_to(ROOT)}-{index}")
        for path in documents
        for index, block in enumerate(code_blocks(path, language))
    ]


README_PYTHON = _examples("python", [ROOT / "README.md"])
DOCS_PYTHON = _examples("python", DOCUMENTS[1:])
ALL_BASH = _examples("bash")


def test_the_documents_have_examples():
    assert README_PYTHON and DOCS_PYTHON and ALL_BASH
    assert sum(len(fastadv_commands(p.values[0])) for p in ALL_BASH) >= 10


def _run_python(block: str, digits_model, tmp_path, monkeypatch):
    model, images, labels = digits_model
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace = {"model": model, "images": images[:16], "labels": labels[:16], "x": images[:16], "y": labels[:16]}
    exec(compile(block, "<example>", "exec"), namespace)


@pytest.mark.parametrize("block", README_PYTHON)
def test_readme_python_examples_run(block, digits_model, tmp_path, monkeypatch):
    _run_python(block, digits_model, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("block", DOCS_PYTHON)
def test_docs_python_examples_run(block, digits_model, tmp_path, monkeypatch):
    _run_python(block, digits_model, tmp_path, monkeypatch)


@pytest.mark.parametrize("block", ALL_BASH)
def test_fastadv_commands_parse(block):
    parser = build_parser()
    for argv in fastadv_commands(block):
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"`fastadv {shlex.join(argv)}` does not parse (exit {exit_.code})")


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    """The README's command examples, run in order as a user would (train, then evaluate what it
    wrote), with the user's own files of the third command made from the digits data. `fastadv
    bench` with no options times 64M-element cases for minutes: it runs here on its smallest case."""
    from fastadv.data import digits

    (block,) = [b for b in code_blocks(ROOT / "README.md", "bash") if "fastadv train" in b]
    test_images, test_labels = digits("test")
    np.savez(tmp_path / "my_set.npz", x=test_images.numpy(), y=test_labels.numpy())
    for argv in fastadv_commands(block):
        if argv[0] == "bench":
            argv = [*argv, "--kernels", "linf_step", "--sizes", "1M", "--dtypes", "float32"]
        if "my_model.pt" in argv:
            shutil.copy(tmp_path / "runs/fgsm-rs/model.pt", tmp_path / "my_model.pt")
        done = subprocess.run(
            [sys.executable, "-m", "fastadv", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"fastadv {shlex.join(argv)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    report = json.loads((tmp_path / "runs/eval/report.json").read_text())
    for attack in ("fgsm", "pgd", "apgd-ce"):
        assert attack in json.dumps(report), f"the report has no {attack} rows"
    assert (tmp_path / "runs/mine/report.json").exists()


def test_the_test_files_the_documents_name_exist():
    """Every tests/... path the documents, the csrc comments and the CI scripts name is there
    (the tests live in folders by layer; a path left behind by a move would point nowhere, and
    .ci/gpu-stack's --ignore of a missing path would silently run what it meant to leave out)."""
    texts = [*DOCUMENTS, *ROOT.glob("tests/**/*.md"), *ROOT.glob("csrc/**/*.[ch]*"), *ROOT.glob(".ci/*")]
    named = {m for path in texts if path.is_file() for m in re.findall(r"\btests/[\w/.-]*\w", path.read_text())}
    assert named, "the documents name no test files"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"named but not there: {missing}"
