"""Experiment config and sweep files: Python files loaded by path, each mistake one line.

The one loader for `--config=PATH[:ARG]` (its `get_config()`), the sweeps' base configs and the
sweep files themselves (`get_sweep()`).
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import ml_collections


class ConfigFileError(ValueError):
  """A config or sweep file that does not exist or does not load."""


def load_module(path: str, what: str = "config") -> ModuleType:
  """The Python file at `path`, executed; `what` names it in errors ("config", "sweep")."""
  if not os.path.isfile(path):
    raise ConfigFileError(f"no {what} file {path}")
  module_spec = importlib.util.spec_from_file_location(
      f"{what}_file_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as error:  # a user's file may raise anything
    raise ConfigFileError(f"cannot load {path}: {one_line(error)}") from None
  return module


def call(path: str, function: str, arg: str, what: str):
  """`function(arg)` (or `function()` without an arg) of the file at `path`."""
  module = load_module(path, what)
  try:
    return getattr(module, function)(arg) if arg else getattr(module, function)()
  except Exception as error:  # a user's file may raise anything
    raise ConfigFileError(f"cannot load {path}: {one_line(error)}") from None


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config()` of `path[:arg]` (`get_config(arg)` with an arg)."""
  path, _, arg = spec.partition(":")
  return call(path, "get_config", arg, "config")


def one_line(error: BaseException) -> str:
  """`Type: first line of the message`."""
  text = str(error).splitlines()[0] if str(error) else ""
  return f"{type(error).__name__}: {text}"
