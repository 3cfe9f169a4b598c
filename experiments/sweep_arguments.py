"""The options of every sweep front end, defined once: the local runner (`experiments.sweep`),
the TPU launcher (`launch.tpu sweep`) and the SLURM job array (`launch.slurm sweep`)."""

from __future__ import annotations

import argparse


def add(parser: argparse.ArgumentParser, *, prefix: str = "", required: bool = True,
        root: bool = False, retries: bool = False) -> None:
  """Adds --sweep, --only, --seeds (and --root, --retries where the front end has them);
  `prefix` starts each help text (e.g. "sweep: " where other commands share the parser)."""
  parser.add_argument("--sweep", required=required, default="",
                      help=f"{prefix}sweep file, experiments/sweeps/FILE.py[:ARG]")
  if root:
    parser.add_argument("--root", required=True, help=f"{prefix}directory of the points' workdirs")
  parser.add_argument("--only", default="", help=f"{prefix}comma-separated point names")
  parser.add_argument("--seeds", default="",
                      help=f"{prefix}comma-separated seeds: repeat every point with each")
  if retries:
    parser.add_argument("--retries", type=int, default=2,
                        help=f"{prefix}times a failed point is run again (preemptions do not "
                             "count)")
