"""One-line explanations of command-line mistakes (a config file or key that does not exist).

ml_collections' flag parser reports them as tracebacks; users get the file or key, what is
wrong and the closest valid keys.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Any, Sequence

import ml_collections


def config_path(argv: Sequence[str], default: str) -> str:
  """The `--config=PATH[:ARG]` given (the last one wins), else the default."""
  given = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
  return given[-1] if given else default


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (`path[:arg]`); ValueError naming the file otherwise."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config: no config file {path}")
  module_spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as error:  # a user's config file may raise anything
    raise ValueError(f"--config: cannot load {path}: {type(error).__name__}: "
                     f"{str(error).splitlines()[0] if str(error) else ''}") from None


def flat_keys(config: Any, prefix: str = "config") -> list[str]:
  """Every leaf key of a config as `config.section.field`."""
  keys = []
  for name, value in config.items():
    key = f"{prefix}.{name}"
    keys += flat_keys(value, key) if isinstance(value, ml_collections.ConfigDict) else [key]
  return keys


def check_config_flags(argv: Sequence[str], default_config: str) -> None:
  """Exits with a one-line error for a missing config file or an unknown `--config.KEY`.

  Call before `config_flags.DEFINE_config_file`, which loads the file (and applies the
  overrides) as soon as it is defined, raising tracebacks for these mistakes.
  """
  if not any(arg.startswith("--config") for arg in argv):
    return
  try:
    message = unknown_key(argv, flat_keys(load_config(config_path(argv, default_config))))
  except ValueError as error:
    message = str(error)
  if message:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


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
