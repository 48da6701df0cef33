"""`import fastadv` gives the whole public API: the attacks and ops at once, the other modules
(models, datasets, evaluate, ...) as attributes imported on first use."""

import subprocess
import sys

import fastadv


def test_every_public_name_resolves():
    for name in fastadv.__all__:
        assert getattr(fastadv, name) is not None, name
    assert fastadv.AutoAttackLite is fastadv.autoattack.AutoAttackLite
    assert callable(fastadv.evaluate.evaluate) and callable(fastadv.models.small_cnn)
    assert callable(fastadv.datasets.digits) and callable(fastadv.train.fit)
    assert {"models", "datasets", "evaluate", "AutoAttackLite"} <= set(dir(fastadv))


def test_modules_beyond_the_attacks_load_on_first_use():
    code = (
        "import sys, fastadv\n"
        "assert 'fastadv.evaluate' not in sys.modules and 'fastadv.train' not in sys.modules\n"
        "fastadv.evaluate\n"
        "assert 'fastadv.evaluate' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_attribute_is_an_attribute_error():
    try:
        fastadv.no_such_thing  # noqa: B018
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("no AttributeError")
