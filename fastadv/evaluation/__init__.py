"""The evaluation package (issue 27 moves the engine here): calibration error (calibration.py),
out-of-distribution detection (ood.py) and their figures (natural_plots.py)."""
