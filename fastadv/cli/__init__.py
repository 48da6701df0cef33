"""The `fastadv` sub-commands eval (robustness evaluation), train (adversarial training), ood
(out-of-distribution detection) and bench (the library fastadv.bench, measured from the command
line): one module each (eval_cmd, train_cmd, ood_cmd, bench_cmd) with `add_parser(sub)` and the
function its sub-command runs, and output (the checked output folder of eval, train and ood).

A thin front end over the library: the option parsing it shares with `fastadv demo` is
fastadv.options, the dispatcher that adds every sub-command to the `fastadv` command is
fastadv/__main__.py, and `fastadv demo` itself lives with its page (fastadv/demo/command.py):
this package imports nothing of fastadv.demo, nor fastadv.demo of it."""
