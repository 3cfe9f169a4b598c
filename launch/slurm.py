"""SLURM: one training run as a batch job, or a sweep as a job array, resumed after requeue.

    python -m launch.slurm run --config=experiments/configs/wmt14_base.py:gpu --workdir=runs/base \
        --nodes=2 --gpus_per_node=8 [--processes_per_node=1|8] [--time=24:00:00] [--partition=P] \
        [--override=train.num_steps=1000 ...] [--dry_run]
    python -m launch.slurm sweep --sweep=experiments/sweeps/table3.py:tpu --root=runs/table3 \
        --gpus_per_node=8 [--only=base,A_h1] [--seeds=0,1,2] ...

Writes `WORKDIR/slurm/NAME.sbatch` (a sweep: `ROOT/slurm/`), submits it with `sbatch --parsable`
and prints the job id. Every task runs `python -m transformer.main --multihost`: one process per
node (it drives the node's GPUs) or one per GPU (`--processes_per_node=GPUS`), and
`jax.distributed.initialize()` finds its peers from SLURM's environment. The job is
`--requeue`able: when SLURM preempts it, the trainer gets SIGTERM, saves a checkpoint and exits;
`--signal_seconds` before the time limit the batch script sends SIGUSR1 to the job's steps (the
same save), then requeues the job, which resumes from the checkpoint. A sweep is one array task
per point, each running `experiments.sweep --only=POINT --launcher=srun`; rows land in
`ROOT/results.jsonl` as locally.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys

from experiments import sweep as sweep_lib
from experiments import sweep_arguments
from launch.job import Job
from transformer import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SlurmError(ValueError):
  """Bad launcher input or a refused submission: one line for the user."""


@dataclasses.dataclass(frozen=True)
class Resources:
  """What each job (or array task) asks SLURM for."""

  nodes: int = 1
  gpus_per_node: int = 0  # 0: CPU only (no --gpus-per-node line)
  processes_per_node: int = 1  # trainer processes (SLURM tasks) per node: 1 or one per GPU
  cpus_per_task: int = 1
  time: str = ""  # SLURM's --time; '' = the partition's default
  partition: str = ""
  account: str = ""
  signal_seconds: int = 120  # SIGUSR1 this long before the time limit: checkpoint and requeue

  def validate(self) -> None:
    """Raises SlurmError naming the flag with an impossible value."""
    for name in ("nodes", "processes_per_node", "cpus_per_task"):
      if getattr(self, name) < 1:
        raise SlurmError(f"--{name} must be at least 1, got {getattr(self, name)}")
    if self.gpus_per_node < 0 or self.signal_seconds < 0:
      raise SlurmError("--gpus_per_node and --signal_seconds must not be negative")
    if self.gpus_per_node and self.processes_per_node not in (1, self.gpus_per_node):
      raise SlurmError(f"--processes_per_node must be 1 (one process drives the node's GPUs) or "
                       f"--gpus_per_node={self.gpus_per_node} (one per GPU), got "
                       f"{self.processes_per_node}")


def header(name: str, resources: Resources, output: str, array: str = "") -> list[str]:
  """The #SBATCH lines of a job."""
  lines = [f"#SBATCH --job-name={name}", f"#SBATCH --nodes={resources.nodes}",
           f"#SBATCH --ntasks-per-node={resources.processes_per_node}",
           f"#SBATCH --cpus-per-task={resources.cpus_per_task}", f"#SBATCH --output={output}",
           "#SBATCH --open-mode=append", "#SBATCH --requeue",
           f"#SBATCH --signal=B:USR1@{resources.signal_seconds}"]
  if resources.gpus_per_node:
    lines.append(f"#SBATCH --gpus-per-node={resources.gpus_per_node}")
  for flag in ("time", "partition", "account"):
    if getattr(resources, flag):
      lines.append(f"#SBATCH --{flag}={getattr(resources, flag)}")
  if array:
    lines.append(f"#SBATCH --array={array}")
  return lines


# The batch shell runs the work in the background so that its USR1 trap can run: it passes the
# signal to the job's steps (the trainers save a checkpoint and exit 0), waits for them, and
# requeues the job, which starts again from the checkpoint.
_BODY = """set -u
cd {repo}
requeue() {{
  echo "slurm: time limit near: checkpointing, then requeueing job $SLURM_JOB_ID"
  scancel --signal=USR1 "$SLURM_JOB_ID"
  wait "$work"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}}
trap requeue USR1
echo "slurm: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, restart ${{SLURM_RESTART_COUNT:-0}}"
{command} &
work=$!
wait "$work"
"""


def script(name: str, resources: Resources, output: str, command_line: str, array: str = "",
           prologue: str = "") -> str:
  """A whole sbatch script around `command_line` (a shell command: `srun ...` or as is)."""
  body = _BODY.format(repo=shlex.quote(REPO), command=command_line)
  return "\n".join(["#!/bin/bash", *header(name, resources, output, array), "", prologue,
                    body])


def trainer_command(config: str, workdir: str, overrides: list[str]) -> list[str]:
  """One `srun` job step of the trainer on every task of the allocation."""
  job = Job(config, workdir, tuple(overrides), ("--multihost",))
  return ["srun", "--kill-on-bad-exit=1", *job.argv()]


def parse_overrides(overrides: list[str]) -> list[str]:
  """`KEY=VALUE` pairs, checked for their shape (the trainer checks the keys)."""
  for override in overrides:
    if "=" not in override or override.startswith("="):
      raise SlurmError(f"--override: expected KEY=VALUE (e.g. train.num_steps=1000), got "
                       f"{override!r}")
  return overrides


def write(path: str, text: str) -> str:
  """Writes the script atomically and makes it executable; returns its path."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return workdir_lib.write_atomically(path, text, mode=0o755)


def submit(path: str, sbatch: str = "sbatch") -> str:
  """`sbatch --parsable PATH` -> the job id; SlurmError with sbatch's own message otherwise."""
  try:
    result = subprocess.run([sbatch, "--parsable", path], capture_output=True, text=True,
                            timeout=120)
  except FileNotFoundError:
    raise SlurmError(f"{sbatch}: not found; run this on a SLURM login node (or --dry_run to "
                     "only write the script)") from None
  if result.returncode != 0:
    message = (result.stderr.strip() or result.stdout.strip() or "no message").splitlines()[0]
    raise SlurmError(f"sbatch refused {path}: {message}")
  return result.stdout.strip().split(";")[0]


def run_job(config: str, workdir: str, resources: Resources, overrides: list[str],
            name: str = "transformer") -> tuple[str, str]:
  """Writes the script of one training run; returns (script path, script text)."""
  resources.validate()
  workdir = os.path.abspath(workdir)
  slurm_dir = os.path.join(workdir, "slurm")
  command = trainer_command(config, workdir, parse_overrides(overrides))
  text = script(name, resources, os.path.join(slurm_dir, "%j.out"), shlex.join(command))
  return write(os.path.join(slurm_dir, f"{name}.sbatch"), text), text


def sweep_job(sweep_spec: str, root: str, resources: Resources, only: str = "", seeds: str = ""
              ) -> tuple[str, str, list[str]]:
  """Writes the array script of a sweep's unfinished points; returns (path, text, points)."""
  resources.validate()
  root = os.path.abspath(root)
  try:
    sweep = sweep_lib.with_seeds(sweep_lib.load_sweep(sweep_spec), sweep_lib.parse_seeds(seeds))
    sweep_lib.validate(sweep)
    chosen = sweep_lib.selected(sweep, {n for n in only.split(",") if n} or None)
  except sweep_lib.SweepError as error:
    raise SlurmError(str(error)) from None
  done = sweep_lib.finished(root)
  points = [p["name"] for p in sweep["points"]
            if p["name"] not in done and (chosen is None or p["name"] in chosen)]
  if not points:
    raise SlurmError(f"sweep '{sweep['name']}': every selected point is finished in {root}")
  prologue = (f"POINTS=({' '.join(map(shlex.quote, points))})\n"
              "POINT=${POINTS[$SLURM_ARRAY_TASK_ID]}")
  command = [sys.executable, "-m", "experiments.sweep", f"--sweep={sweep_spec}", f"--root={root}",
             "--only=$POINT", "--launcher=srun", "--retries=0"]
  if seeds:
    command.append(f"--seeds={seeds}")
  # $POINT is the shell's: double quotes let the batch script expand it.
  command_line = shlex.join(command).replace("'--only=$POINT'", '"--only=$POINT"')
  text = script(sweep["name"], resources, os.path.join(root, "slurm", "%A_%a.out"), command_line,
                f"0-{len(points) - 1}", prologue)
  return write(os.path.join(root, "slurm", f"{sweep['name']}.sbatch"), text), text, points


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m launch.slurm",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="one training run as a batch job")
  run.add_argument("--config", required=True, help="config file (FILE or FILE:VARIANT)")
  run.add_argument("--workdir", required=True, help="run directory on a shared filesystem")
  run.add_argument("--override", action="append", default=[],
                   help="KEY=VALUE config override (repeatable): --config.KEY=VALUE")
  run.add_argument("--name", default="transformer", help="job name")
  sweep = commands.add_parser("sweep", help="a sweep as a job array (one task per point)")
  sweep_arguments.add(sweep, root=True)
  for sub in (run, sweep):
    sub.add_argument("--nodes", type=int, default=1, help="nodes per job (array task)")
    sub.add_argument("--gpus_per_node", type=int, default=0, help="GPUs per node (0: CPU)")
    sub.add_argument("--processes_per_node", type=int, default=1,
                     help="trainer processes per node: 1 (it drives all the node's GPUs) or "
                          "--gpus_per_node (one per GPU)")
    sub.add_argument("--cpus_per_task", type=int, default=1, help="CPUs per process")
    sub.add_argument("--time", default="", help="time limit (SLURM format, e.g. 24:00:00)")
    sub.add_argument("--partition", default="", help="SLURM partition")
    sub.add_argument("--account", default="", help="SLURM account")
    sub.add_argument("--signal_seconds", type=int, default=120,
                     help="checkpoint and requeue this many seconds before the time limit")
    sub.add_argument("--sbatch", default="sbatch", help="the sbatch command")
    sub.add_argument("--dry_run", action="store_true", help="write the script, do not submit")
  return parser


def main(argv: list[str] | None = None) -> None:
  """Writes and submits the job; errors are one line and exit non-zero."""
  args = _parser().parse_args(argv)
  resources = Resources(args.nodes, args.gpus_per_node, args.processes_per_node, args.cpus_per_task,
                        args.time, args.partition, args.account, args.signal_seconds)
  try:
    if args.command == "run":
      path, _ = run_job(args.config, args.workdir, resources, args.override, args.name)
      what = f"run of {args.config}"
    else:
      path, _, points = sweep_job(args.sweep, args.root, resources, args.only, args.seeds)
      what = f"array of {len(points)} point(s): {', '.join(points)}"
    print(f"wrote {path}")
    if not args.dry_run:
      print(f"submitted job {submit(path, args.sbatch)}: {what}")
  except (SlurmError, OSError) as error:
    raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
  main()
