r"""Cloud TPU VM launcher: a small CLI over `gcloud`, with absl flags like the trainer.

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
import json
import sys
from typing import Any, Sequence

from absl import flags

from launch import vm as vm_lib
from launch.job import Job
from launch.vm import Gcloud, LaunchError, TpuVm

COMMANDS = ("create", "setup", "run", "logs", "status", "stop", "delete", "watch", "sweep")
HELP_FLAGS = ("--help", "-h", "-help", "--helpfull", "--helpshort", "-?")
num_hosts = vm_lib.num_hosts


def define_flags(values: flags.FlagValues) -> None:
  """The launcher's flags, on their own FlagValues (the trainer's stay untouched)."""
  flags.DEFINE_string("launch_config", None, "JSON file with defaults for these flags.",
                      flag_values=values)
  flags.DEFINE_string("name", "transformer", "TPU VM name (sweep: prefix of the VMs' names).",
                      flag_values=values)
  flags.DEFINE_string("zone", None, "e.g. us-central2-b.", flag_values=values)
  flags.DEFINE_string("project", None, "GCP project (default: gcloud's).", flag_values=values)
  flags.DEFINE_string("accelerator_type", "v4-8", "v4-8, v4-32, v5litepod-8, v5p-8, v6e-8, ...",
                      flag_values=values)
  flags.DEFINE_string("runtime_version", None, "TPU VM image (default: the generation's: v4 "
                      "tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e "
                      "v2-alpha-tpuv6e).", flag_values=values)
  flags.DEFINE_enum("provisioning", "on-demand",
                    ["on-demand", "spot", "preemptible", "reserved", "guaranteed"],
                    "TPU VMs: on-demand, spot, preemptible, reserved; queued resources: "
                    "on-demand, spot, reserved, guaranteed.", flag_values=values)
  flags.DEFINE_bool("queued", False, "Use a queued resource.", flag_values=values)
  flags.DEFINE_string("config", "experiments/configs/wmt14_base.py", "Trainer config.",
                      flag_values=values)
  flags.DEFINE_string("workdir", "", "The trainer's workdir (gs://BUCKET/PATH).",
                      flag_values=values)
  flags.DEFINE_string("data_dir", "", "tfds data_dir (gs://...).", flag_values=values)
  flags.DEFINE_multi_string("override", [], "config.FIELD=VALUE passed to the trainer.",
                            flag_values=values)
  flags.DEFINE_string("collect", "", "logs: copy every worker's log into this directory.",
                      flag_values=values)
  flags.DEFINE_string("sweep", "", "sweep: experiments/sweeps/FILE.py[:ARG].",
                      flag_values=values)
  flags.DEFINE_integer("num_vms", 1, "sweep: VMs used in parallel.", flag_values=values)
  flags.DEFINE_string("only", "", "sweep: comma-separated point names.", flag_values=values)
  flags.DEFINE_string("seeds", "", "sweep: comma-separated seeds to repeat every point with.",
                      flag_values=values)
  flags.DEFINE_integer("retries", 2, "sweep: times a failed point is run again (preemptions do "
                       "not count).", flag_values=values)
  flags.DEFINE_bool("keep_vms", False, "sweep: keep the VMs after the sweep.", flag_values=values)
  flags.DEFINE_float("poll_seconds", 60.0, "Seconds between state checks.", flag_values=values)
  flags.DEFINE_integer("max_polls", 10_000, "State checks before giving up.", flag_values=values)
  flags.DEFINE_bool("dry_run", False, "Print the gcloud commands only.", flag_values=values)


def load_defaults(path: str | None) -> dict[str, Any]:
  """Flag defaults from a JSON launch config."""
  if not path:
    return {}
  try:
    with open(path, encoding="utf-8") as handle:
      return json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise LaunchError(f"--launch_config: cannot read {path}: {error}") from None


def usage(values: flags.FlagValues) -> str:
  """`--help`: the commands (this module's docstring) and every flag with its help text."""
  return f"{__doc__.strip()}\n\nCommands: {', '.join(COMMANDS)}\n\nFlags:\n{values.get_help()}"


def parse(argv: Sequence[str]) -> argparse.Namespace:
  """COMMAND plus flags (defaults from `--launch_config`) -> options; `--help` prints the
  usage and exits 0."""
  values = flags.FlagValues()
  define_flags(values)
  if any(arg in HELP_FLAGS for arg in argv):
    print(usage(values))
    raise SystemExit(0)
  prefix = "--launch_config="
  config_path = next((arg[len(prefix):] for arg in argv if arg.startswith(prefix)), None)
  for key, value in load_defaults(config_path).items():
    if key not in values:
      raise LaunchError(f"--launch_config: unknown key '{key}' in {config_path}")
    values.set_default(key, value)
  try:
    positional = values(["launch.tpu", *argv])[1:]
  except (flags.Error, ValueError) as error:
    raise LaunchError(str(error).splitlines()[0]) from None
  if len(positional) != 1 or positional[0] not in COMMANDS:
    raise LaunchError(f"expected one command out of {', '.join(COMMANDS)}; got "
                      f"{' '.join(positional) or 'none'}")
  options = argparse.Namespace(**{name: values[name].value for name in values})
  options.command = positional[0]
  return options


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
      from launch import tpu_sweep  # noqa: PLC0415  (imports the sweep runner and TensorFlow)
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
