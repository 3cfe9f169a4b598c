r"""Cloud TPU VM launcher: a small CLI over `gcloud`.

    python -m launch.tpu create  --name=mt --zone=us-central2-b --accelerator_type=v4-8 \
                                 --provisioning=spot
    python -m launch.tpu setup   --name=mt --zone=us-central2-b --accelerator_type=v4-8
    python -m launch.tpu run     --name=mt --zone=us-central2-b \
                                 --config=experiments/configs/wmt14_base.py \
                                 --workdir=gs://bucket/runs/base --data_dir=gs://bucket/tfds
    python -m launch.tpu watch | logs | status | stop | delete | sweep ...

Every command takes `--dry_run` (print the exact gcloud commands instead of running them).
Defaults may come from a JSON file (`--launch_config=launch/example.json`); flags override it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any, Sequence

from experiments import sweep_arguments
from launch import vm as vm_lib
from launch.job import Job
from launch.vm import Gcloud, LaunchError, TpuVm
from transformer.cli_errors import HELP_FLAGS

COMMANDS = ("create", "setup", "run", "logs", "status", "stop", "delete", "watch", "sweep")


class _Parser(argparse.ArgumentParser):
  """argparse whose mistakes raise LaunchError (one line) instead of printing the usage."""

  def error(self, message: str):
    raise LaunchError(message)


def parser() -> argparse.ArgumentParser:
  """The launcher's command line: COMMAND and its flags."""
  result = _Parser(prog="python -m launch.tpu", epilog=f"Commands: {', '.join(COMMANDS)}",
                   add_help=False)
  add = result.add_argument
  add("command", nargs="?", help=f"one of {', '.join(COMMANDS)}")
  add("--launch_config", default=None, help="JSON file with defaults for these flags.")
  add("--name", default="transformer", help="TPU VM name (sweep: prefix of the VMs' names).")
  add("--zone", default=None, help="e.g. us-central2-b.")
  add("--project", default=None, help="GCP project (default: gcloud's).")
  add("--accelerator_type", default="v4-8", help="v4-8, v4-32, v5litepod-8, v5p-8, v6e-8, ...")
  add("--runtime_version", default=None,
      help="TPU VM image (default: the generation's: v4 tpu-ubuntu2204-base, v5e "
           "v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e).")
  add("--provisioning", default="on-demand",
      choices=["on-demand", "spot", "preemptible", "reserved", "guaranteed"],
      help="TPU VMs: on-demand, spot, preemptible, reserved; queued resources: on-demand, "
           "spot, reserved, guaranteed.")
  add("--queued", action="store_true", help="Use a queued resource.")
  add("--config", default="experiments/configs/wmt14_base.py", help="Trainer config.")
  add("--workdir", default="", help="The trainer's workdir (gs://BUCKET/PATH).")
  add("--data_dir", default="", help="tfds data_dir (gs://...).")
  add("--override", action="append", default=[],
      help="config.FIELD=VALUE passed to the trainer (repeatable).")
  add("--collect", default="", help="logs: copy every worker's log into this directory.")
  sweep_arguments.add(result, prefix="sweep: ", required=False, retries=True)
  add("--num_vms", type=int, default=1, help="sweep: VMs used in parallel.")
  add("--keep_vms", action="store_true", help="sweep: keep the VMs after the sweep.")
  add("--poll_seconds", type=float, default=60.0, help="Seconds between state checks.")
  add("--max_polls", type=int, default=10_000, help="State checks before giving up.")
  add("--dry_run", action="store_true", help="Print the gcloud commands only.")
  return result


def load_defaults(path: str | None) -> dict[str, Any]:
  """Flag defaults from a JSON launch config."""
  if not path:
    return {}
  try:
    with open(path, encoding="utf-8") as handle:
      return json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise LaunchError(f"--launch_config: cannot read {path}: {error}") from None


def usage() -> str:
  """`--help`: the commands (this module's docstring) and every flag with its help text."""
  return f"{__doc__.strip()}\n\n{parser().format_help()}"


def parse(argv: Sequence[str]) -> argparse.Namespace:
  """COMMAND plus flags (defaults from `--launch_config`) -> options; `--help` prints the
  usage and exits 0."""
  if any(arg in HELP_FLAGS for arg in argv):
    print(usage())
    raise SystemExit(0)
  command_line = parser()
  known = set(vars(command_line.parse_args([])))
  prefix = "--launch_config="
  config_path = next((arg[len(prefix):] for arg in argv if arg.startswith(prefix)), None)
  defaults = load_defaults(config_path)
  for key in defaults:
    if key not in known or key == "command":
      raise LaunchError(f"--launch_config: unknown key '{key}' in {config_path}")
  command_line.set_defaults(**defaults)
  options, unknown = command_line.parse_known_args(list(argv))
  if unknown:
    raise LaunchError(unknown_flag(unknown[0], known))
  if options.command not in COMMANDS:
    raise LaunchError(f"expected one command out of {', '.join(COMMANDS)}; got "
                      f"{options.command or 'none'}")
  return options


def unknown_flag(argument: str, known: set[str]) -> str:
  """The one-line message for an argument no flag takes, with the closest flag."""
  name = argument.lstrip("-").split("=", 1)[0]
  close = difflib.get_close_matches(name, sorted(known), n=1)
  hint = f"; did you mean --{close[0]}?" if close else ""
  return f"unknown flag or argument '{argument}'{hint}"


def check_options(options: argparse.Namespace) -> None:
  """Flag values that gcloud would reject later, or that would lose work."""
  if not vm_lib.ZONE.match(options.zone or ""):
    raise LaunchError(f"--zone: '{options.zone}' is not a zone like us-central2-b")
  if options.command in ("run", "watch", "sweep") and not options.workdir:
    raise LaunchError(f"{options.command}: --workdir is required (gs://BUCKET/PATH)")
  if options.command in ("watch", "sweep") and not vm_lib.shared_root(options.workdir):
    raise LaunchError(f"{options.command}: --workdir must be on gs://, not "
                      f"'{options.workdir}': a recreated VM starts with an empty disk and would "
                      "train from step 0")


def job_of(options: argparse.Namespace) -> Job:
  """The trainer run that `run` starts and `watch` restarts: `--config` in `--workdir`."""
  return Job(options.config, options.workdir)


def watch(vm: TpuVm, job: Job, printer=print) -> int:
  """Keeps a started run alive through preemptions until its trainer exits; returns restarts."""
  code, restarts = vm_lib.run_to_completion(vm, job, printer=printer, start=False)
  if code:
    raise LaunchError(f"{vm.name}: the trainer exited with code {code} (restarts: {restarts}); "
                      f"`python -m launch.tpu logs --collect=DIR` fetches every worker's log")
  printer(f"{vm.name}: training finished (restarts: {restarts})")
  return restarts


def main(argv: Sequence[str] | None = None) -> None:
  """Parses flags and runs one command; errors are one line and exit non-zero."""
  try:
    options = parse(sys.argv[1:] if argv is None else argv)
    check_options(options)
    gcloud = Gcloud(options.dry_run)
    gcloud.check_ready()
    if options.command == "sweep":
      from launch import tpu_sweep  # noqa: PLC0415  (the sweep runner imports JAX: not for the other commands)
      tpu_sweep.run_sweep_on_vms(gcloud, options)
      return
    vm = TpuVm(gcloud, options)
    actions = {
        "create": vm.create, "setup": vm.setup, "stop": vm.stop, "delete": vm.delete,
        "run": lambda: (vm.start_training(job_of(options)), vm.stream_logs()),
        "logs": lambda: vm.collect_logs(options.collect) if options.collect else vm.stream_logs(),
        "status": lambda: print(vm.state()),
        "watch": lambda: watch(vm, job_of(options)),
    }
    actions[options.command]()
  except LaunchError as error:
    raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
  main()
