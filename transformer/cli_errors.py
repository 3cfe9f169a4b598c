"""One-line explanations of command-line mistakes (a config file or key that does not exist).

ml_collections' flag parser reports them as tracebacks; users get the file or key, what is
wrong and the closest valid keys.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import ml_collections

from transformer import config_files

# What our command lines accept as a request for their usage (absl knows only --help and -?).
HELP_FLAGS = ("--help", "-h", "-help", "--helpfull", "--helpshort", "-?")


def config_path(argv: Sequence[str], default: str) -> str:
  """The `--config=PATH[:ARG]` given (the last one wins), else the default."""
  given = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
  return given[-1] if given else default


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`config_files.load_config` with its error naming the flag: `--config: ...`."""
  try:
    return config_files.load_config(spec)
  except config_files.ConfigFileError as error:
    raise ValueError(f"--config: {error}") from None


def explicit_config(argv: Sequence[str], default: str) -> list[str]:
  """`["--config=DEFAULT"]` to put first in `argv` when it names no config file, else `[]`."""
  named = any(arg == "--config" or arg.startswith("--config=") for arg in argv)
  return [] if named else [f"--config={default}"]


def flat_keys(config: Any, prefix: str = "config") -> list[str]:
  """Every leaf key of a config as `config.section.field`."""
  keys = []
  for name, value in config.items():
    key = f"{prefix}.{name}"
    keys += flat_keys(value, key) if isinstance(value, ml_collections.ConfigDict) else [key]
  return keys


def unknown_key(argv: Sequence[str], keys: list[str]) -> str | None:
  """A message for the first `--config.KEY=...` that names no config field, with the closest."""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[2:].split("=", 1)[0]
    if key not in keys:
      close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
      hint = f"; closest: {', '.join(close)}" if close else ""
      return f"--{key}: no such config key{hint}"
  return None


def explain(argv: Sequence[str], default_config: str, error: BaseException) -> str:
  """The one-line message for a flag-parsing failure."""
  config = load_config(config_path(argv, default_config))  # raises for a bad --config
  message = unknown_key(argv, flat_keys(config))
  if message:
    return message
  lines = [line for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__
