"""The option parsing the two front ends share: the `fastadv` sub-commands in fastadv/cli/ and
`fastadv demo` (fastadv/demo/command.py) read their options through it, and neither imports the
other. Library code below it (models, data, evaluation) knows nothing of options.

- arguments: argument types (argparse `type=`), CliError (a bad input: one line, exit status 2),
  the defaults an option shares with the function it runs, DEVICE_HELP;
- data_options: how --data is read (--input-size, --workers, --limit, --subset, ...) and opened;
- model_options: --model in every format fastadv.models.load reads, --weights, --mean, --std;
- class_options: --class-map and --all-classes (the data's classes as the model's outputs);
- inputs: the model (or the cached digits model) and the data a command's options name, opened
  and checked to fit each other."""
