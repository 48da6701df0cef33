"""`fastadv demo`, the epsilon explorer: a web page (gradio) that attacks one image as an eps
slider moves, and draws robustness curves in the background.

Layout: `registry.py` the attacks offered (one line each), `defense_choices.py` the defences
offered (specs of `fastadv eval --defense`) and the picker's labels, `explorer.py` one attack on
one image, bare or behind a defence (exactly fastadv's API, seeded), `uploads.py` an uploaded
picture as the model's input, `view.py` what the page shows of a result, `curve.py` the
robustness-curve job (fastadv.evaluation, cached), `app.py` the page (the only module that
imports gradio), `command.py` the `fastadv demo` sub-command (its options, read through
fastadv.options as `fastadv eval` reads them, and `run`). docs/demo.md describes it.

A front end: it imports the library (fastadv.evaluation, the attacks, the defences, the shared
option parsing of fastadv.options) and nothing of fastadv.cli, which imports nothing of it; the
`fastadv` command (fastadv/__main__.py) dispatches to both.
"""

from __future__ import annotations

from .defense_choices import DEFENSES, NO_DEFENSE
from .explorer import Explorer, Outcome, Picture
from .registry import ATTACKS, AttackChoice, Settings

__all__ = ["ATTACKS", "DEFENSES", "NO_DEFENSE", "AttackChoice", "Explorer", "Outcome", "Picture", "Settings", "serve"]


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, **preselected) -> None:
    """Serves the page on `explorer` at host:port until interrupted (`preselected`: the defense,
    adaptive and eot_samples the page starts with); OSError when it cannot listen there. Needs
    gradio, imported here and not with the package (the explorer and the curves work without it)."""
    from . import app

    app.serve(explorer, host, port, **preselected)
