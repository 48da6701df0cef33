"""The library behind `fastadv bench`: what is measured and how, importable, so that the command
and the scripts run the same code.

- step.py: the fused L-inf and L2 steps against PyTorch eager, torch.compile and a copy;
- attack.py: attack images/s (PGD, APGD, CW, AutoAttack) against a naive loop and the peers
  (peers.py: the Adversarial Robustness Toolbox, Foolbox, advertorch), and its models;
- training.py: adversarial-training epochs against the loop people write;
- timing.py: samples of seconds per call; results.py: the long-format CSV rows.

Three places, one name each: this package is the measuring code; `fastadv bench`'s options and
printing are fastadv/cli/bench_cmd.py (as every sub-command's are cli/<name>_cmd.py); the
repository's benchmarks/ folder (not installed) holds the pytest-benchmark files, the stand-alone
scripts (guards, memory, data, defences) and the committed results with the README's tables."""
