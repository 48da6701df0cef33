"""What the tests share, by purpose (no test module imports another; tests/ is on sys.path through
pyproject.toml's `pythonpath`, so every folder imports these as `support.<module>`):
backends (the backends, dtypes and devices under test), compare (exact and tolerant comparisons),
op_inputs (random op inputs), models (the trained digits CNNs and model wrappers), model_state
(what an attack must leave as it was), plain_attacks (attack loops written independently of
fastadv's), bad_calls (the bad calls every attack must reject), reports (evaluate() reports and
interrupted runs), cli (running the command line in-process) and model_factories (the
`--model support.model_factories:<name>` factories)."""
