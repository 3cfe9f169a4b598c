"""One trainer invocation as data: what the sweep hands to its launchers (local, SLURM, TPU).

A `Job` is `python -m transformer.main --config=... --workdir=... [--config.FIELD=VALUE ...]
[--mode=... and other flags]`. Launchers run it where they run things; none of them parses a
command line back into its parts.
"""

from __future__ import annotations

import dataclasses
import sys

CONFIG_FLAG = "--config."


@dataclasses.dataclass(frozen=True)
class Job:
  """A trainer run: config file, workdir, config overrides (`FIELD=VALUE`, dotted field names)
  and other trainer flags (`--mode=average`, `--checkpoint_dir=...`)."""

  config: str
  workdir: str
  overrides: tuple[str, ...] = ()
  extra_flags: tuple[str, ...] = ()

  @property
  def mode(self) -> str:
    """The trainer's `--mode` (train unless a flag says otherwise)."""
    modes = [flag.split("=", 1)[1] for flag in self.extra_flags if flag.startswith("--mode=")]
    return modes[-1] if modes else "train"

  def flags(self) -> list[str]:
    """The trainer's flags, in the order a person would type them."""
    return [f"--config={self.config}", f"--workdir={self.workdir}",
            *(CONFIG_FLAG + override for override in self.overrides), *self.extra_flags]

  def argv(self, python: str = sys.executable) -> list[str]:
    """The whole command line, run with `python`."""
    return [python, "-m", "transformer.main", *self.flags()]

  def with_flags(self, *flags: str) -> Job:
    """This job with more trainer flags: `--config.FIELD=VALUE` ones become overrides."""
    overrides = tuple(flag[len(CONFIG_FLAG):] for flag in flags if flag.startswith(CONFIG_FLAG))
    extra = tuple(flag for flag in flags if not flag.startswith(CONFIG_FLAG))
    return dataclasses.replace(self, overrides=self.overrides + overrides,
                               extra_flags=self.extra_flags + extra)
