"""`fastadv demo`, the epsilon explorer: a web page (gradio) that attacks one image as an eps
slider moves, and draws robustness curves in the background.

Layout: `registry.py` the attacks offered (one line each), `defenses.py` the defences offered
(specs of `fastadv eval --defense`), `explorer.py` one attack on one image, bare or behind a
defence (exactly fastadv's API, seeded), `uploads.py` an uploaded picture as the model's input,
`view.py` what the page shows of a result, `curve.py` the robustness-curve job (fastadv.evaluate,
cached), `app.py` the page (the only module that imports gradio). docs/demo.md describes it.
"""

from .explorer import Explorer, Outcome, Picture
from .registry import ATTACKS, AttackChoice, Settings

__all__ = ["ATTACKS", "AttackChoice", "Explorer", "Outcome", "Picture", "Settings"]
