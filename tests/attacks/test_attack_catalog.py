"""The attack catalogue (fastadv/attacks/catalog.py) is the one place an attack's settings are
written: the docs' table is its table, AutoAttack's stages and the demo are built from it, and
what each entry says of its class holds."""

import inspect
from pathlib import Path

import pytest

from fastadv.attacks import catalog
from fastadv.attacks.autoattack import STAGES, VERSIONS
from fastadv.demo.registry import ATTACKS as DEMO

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation-and-training.md"


def test_the_docs_table_is_the_catalogues():
    text = DOC.read_text()
    start = text.index("<!-- the attack table: fastadv.attacks.catalog.table() -->\n")
    start = text.index("\n", start) + 1
    end = text.index("\n<!-- end of the attack table -->", start)
    assert text[start:end] == catalog.table(), "docs/evaluation-and-training.md: paste catalog.table() again"


def _takes(cls: type, keyword: str) -> bool:
    return keyword in inspect.signature(cls.__init__).parameters or keyword in cls.supported_options


@pytest.mark.parametrize("name", list(catalog.ATTACKS))
def test_each_entry_says_what_holds_of_its_class(name):
    entry = catalog.ATTACKS[name]
    assert entry.norm in ("linf", "l2")
    assert all(_takes(entry.attack_class, k) for k in entry.settings), name
    if entry.eot is not None:
        assert _takes(entry.attack_class, entry.eot), name
    if entry.minimal_norm:  # judged by their L2 distance
        assert entry.norm == "l2"
    if entry.adaptive_adds is not None:
        assert entry.adaptive_adds in catalog.ATTACKS
    assert entry.seeding in ("generator", "seed", None)


def test_autoattacks_stages_are_catalogued_under_their_own_name():
    assert set(catalog.AUTOATTACK_STAGES) == set(STAGES) >= {s for v in VERSIONS.values() for s in v}
    for name, stage in catalog.AUTOATTACK_STAGES.items():
        assert all(_takes(stage.attack_class, k) for k in stage.settings), name
        assert f"`autoattack:{name}`" in catalog.table()
    # the two budgets of "apgd-ce" are both in the table, under two names
    assert catalog.ATTACKS["apgd-ce"].settings["steps"] is catalog.STEPS
    assert str(catalog.AUTOATTACK_STAGES["apgd-ce"].settings["steps"]) == "steps (100)"


def test_the_demo_builds_the_catalogues_attacks():
    for label, choice in DEMO.items():
        entry = catalog.ATTACKS[choice.curve_name]
        assert (choice.attack_class, choice.norm, choice.minimal) == (entry.attack_class, entry.norm,
                                                                      entry.minimal_norm), label  # fmt: skip
        assert set(choice.overrides) <= set(inspect.signature(entry.attack_class.__init__).parameters), label
