"""Robustness evaluation: attacks x eps as a cascade, one report (``evaluate``).

Modules, one concern each: `engine` (the batches, the cascade per eps, `evaluate`), `sums` (what
is counted, and its reduction over torch.distributed ranks), `report` (the report built,
printed, written as JSON), `resume` (the state file and the fingerprints of model and data),
`stages` (an AutoAttack batch stage by stage: its log, progress and mid-batch resume),
`examples` (the samples kept for a picture), `inputs` (a model and data that fit each other),
`defended` (a model evaluated bare and behind defences), `calibration` (the calibration error
of every report), `ood` (out-of-distribution detection, `detect_ood`) and `plots` (figures;
imported on use: it needs matplotlib). The attacks and their settings are fastadv.attacks.catalog's.
"""

from .defended import evaluate_defenses
from .engine import evaluate, within_budget
from .examples import Examples
from .inputs import check_fit
from .report import format_classes, format_report, robust_accuracy, write_json
from .resume import data_fingerprint

__all__ = ["Examples", "check_fit", "data_fingerprint", "evaluate", "evaluate_defenses", "format_classes",
           "format_report", "robust_accuracy", "within_budget", "write_json"]  # fmt: skip
