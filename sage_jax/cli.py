"""Command-line parsing shared by `main.py` and `python -m sage_jax.compare`.

    app.run(main, flags_parser=cli.parse_flags)

parses the flags as absl's default does, except that a `--config.<field>`
override naming no field of the configuration (e.g. the typo
`--config.sage.upper_lamda=0.5`) stops the program with one line naming the
field and its closest matches, where ml_collections raises a chain of
tracebacks.
"""
import difflib
import re
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
import ml_collections

def _config_path(argv: Sequence[str], name: str) -> Optional[str]:
  """The value of `--<name>=PATH` or `--<name> PATH` in `argv`, if any."""
  for i, arg in enumerate(argv):
    match = re.match(rf"^--?{name}(=(.*))?$", arg)
    if match:
      if match.group(1) is not None:
        return match.group(2)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def _field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list:
  """Dotted paths of every field and block of `config`."""
  paths = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    paths.append(path)
    if isinstance(value, ml_collections.ConfigDict):
      paths.extend(_field_paths(value, path + "."))
  return paths


def unknown_field_message(config: ml_collections.ConfigDict,
                          overrides: Sequence[str],
                          name: str = "config") -> Optional[str]:
  """One line about the first override that names no field of `config`.

  Args:
    config: the configuration the overrides apply to.
    overrides: dotted field paths, e.g. ["sage.upper_lamda"].
    name: the config flag's name, for the message.

  Returns:
    e.g. "--config.sage.upper_lamda: no such config field; did you mean
    --config.sage.upper_lambda?", or None when every override names a field.
  """
  known = _field_paths(config)
  for path in overrides:
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict):
        block = ".".join(parts[:depth])
        return (f"--{name}.{path}: {name}.{block} is a value, not a block of "
                "fields.")
      if part not in node:
        close = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
        if close:
          hint = ("did you mean " + " or ".join(f"--{name}.{c}" for c in close)
                  + "?")
        else:
          parent = ".".join(parts[:depth])
          hint = (f"the fields of {name}{'.' + parent if parent else ''} are "
                  + ", ".join(sorted(node.keys())) + ".")
        return f"--{name}.{path}: no such config field; {hint}"
      node = node[part]
  return None


def parse_flags(argv: Sequence[str], name: str = "config") -> list:
  """absl's flag parsing with one-line errors for unknown config fields.

  Pass as `app.run(main, flags_parser=parse_flags)`.

  Args:
    argv: the command line, program name first.
    name: the name of the `config_flags.DEFINE_config_file` flag.

  Returns:
    The arguments left after parsing the flags, program name first.

  Raises:
    SystemExit: with status 1 after writing one line to stderr, when an
      override names no field; other flag errors exit as absl's do.
  """
  try:
    return app.parse_flags_with_usage(list(argv))
  except (AttributeError, KeyError) as error:
    # ml_collections raises these (not flags.Error) for an unknown field.
    # `--config.a.b=v` or `--config.a.b v`: the override path is "a.b".
    matches = (re.match(rf"^--?{name}\.([^=\s]+)", arg) for arg in argv)
    overrides = [match.group(1) for match in matches if match]
    message = None
    path = _config_path(argv, name)
    if path is not None:
      # Loaded again: ml_collections does not keep the config when it fails.
      config = flags.FLAGS[name].parser.parse(path)
      message = unknown_field_message(config, overrides, name)
    if message is None:
      message = str(error).strip("'\"").splitlines()[0]
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.exit(1)
