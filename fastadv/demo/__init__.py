"""`fastadv demo`, the epsilon explorer: a web page (gradio) that attacks one image as an eps
slider moves, and draws robustness curves in the background.

Layout: `registry.py` the attacks offered (one line each), `defense_choices.py` the defences
offered (specs of `fastadv eval --defense`) and the picker's labels, `explorer.py` one attack on
one image, bare or behind a defence (exactly fastadv's API, seeded), `uploads.py` an uploaded
picture as the model's input, `view.py` what the page shows of a result, `curve.py` the
robustness-curve job (fastadv.evaluation, cached), `app.py` the page (the only module that
imports gradio). docs/demo.md describes it.

A front end: it imports the library (fastadv.evaluation, the attacks, the defences) and nothing
of fastadv.cli. `fastadv demo` (fastadv.cli.demo_cmd) parses the command line, loads the model and
the data as `fastadv eval` does, and starts the page through this package's names only: `serve`,
`Explorer`, `DEFENSES` and `NO_DEFENSE`.
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
