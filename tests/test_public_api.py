"""`import fastadv` gives the whole public API: the attacks and ops at once, the other modules
(models, data, evaluation, ...) and the evaluation function as attributes imported on first use."""

import subprocess
import sys

import fastadv


def test_every_public_name_resolves():
    for name in fastadv.__all__:
        assert getattr(fastadv, name) is not None, name
    assert fastadv.AutoAttackLite is fastadv.attacks.autoattack.AutoAttackLite
    assert fastadv.evaluate is fastadv.evaluation.evaluate and callable(fastadv.models.small_cnn)
    assert callable(fastadv.data.digits) and callable(fastadv.train.fit)
    assert {"models", "data", "evaluate", "evaluation", "AutoAttackLite"} <= set(dir(fastadv))


def test_modules_beyond_the_attacks_load_on_first_use():
    code = (
        "import sys, fastadv\n"
        "assert 'fastadv.evaluation' not in sys.modules and 'fastadv.train' not in sys.modules\n"
        "fastadv.evaluate\n"
        "assert 'fastadv.evaluation' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_attribute_is_an_attribute_error():
    try:
        fastadv.no_such_thing  # noqa: B018
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("no AttributeError")


def test_evaluate_is_the_function_and_evaluation_the_package(digits_model):
    """fastadv.evaluate(model, ...) runs the evaluation (it was the module, "not
    callable"); it is the function of the package fastadv.evaluation (`from fastadv.evaluation
    import evaluate`), whatever was imported first (no module is also callable)."""
    import inspect

    from fastadv.evaluation import evaluate, robust_accuracy

    model, x, y = digits_model
    report = fastadv.evaluate(model, (x[:8], y[:8]), attacks=["fgsm"], eps=[0.1], progress=False)
    assert report["samples"] == 8
    assert robust_accuracy(report) == robust_accuracy(evaluate(model, (x[:8], y[:8]), attacks=["fgsm"], eps=[0.1],
                                                               progress=False))  # fmt: skip
    assert fastadv.evaluate is evaluate and "model" in inspect.signature(fastadv.evaluate).parameters
    code = (
        "import fastadv, torch\n"
        "import fastadv.evaluation.engine\n"
        "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
        "data = (torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))\n"
        "r = fastadv.evaluate(model, data, attacks=['fgsm'], eps=[0.1], progress=False)\n"
        "from fastadv.evaluation import evaluate\n"
        "assert evaluate is fastadv.evaluate and evaluate(model, data, attacks=['fgsm'], eps=[0.1],"
        " progress=False)['clean_accuracy'] == r['clean_accuracy']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
