"""Cloud TPU VM launcher: a small CLI over `gcloud`.

    python -m launch.tpu create  --name=mt --zone=us-central2-b --accelerator_type=v4-8 [--spot]
    python -m launch.tpu setup   --name=mt --zone=us-central2-b --repo=https://github.com/you/transformer
    python -m launch.tpu run     --name=mt --zone=us-central2-b --config=experiments/configs/wmt14_base.py \
                                 --workdir=gs://bucket/runs/base --data_dir=gs://bucket/tfds
    python -m launch.tpu logs | status | stop | delete | watch | sweep ...

Every command takes `--dry_run` (print the exact gcloud commands instead of running them).
Defaults may come from a JSON file (`--launch_config=launch/example.json`); flags override it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("v2", "v3", "v4", "v5litepod", "v5p", "v6e")
ZONE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")
READY, PREEMPTED, GONE = "READY", "PREEMPTED", "NOT_FOUND"
# Queued-resource states mapped onto TPU VM states.
QUEUED_STATES = {"ACTIVE": READY, "SUSPENDED": PREEMPTED, "FAILED": PREEMPTED,
                 "WAITING_FOR_RESOURCES": "CREATING", "PROVISIONING": "CREATING",
                 "ACCEPTED": "CREATING"}
LOG = "~/transformer_train.log"


class LaunchError(RuntimeError):
  """Bad input or environment: the message says what to do."""


def num_hosts(accelerator_type: str) -> int:
  """VMs in a slice: v2/v3/v4/v5p count cores (8 per host); v5e/v6e count chips (4 per host
  beyond the single 8-chip host)."""
  match = re.fullmatch(r"(v2|v3|v4|v5litepod|v5p|v6e)-(\d+)", accelerator_type)
  if not match or int(match.group(2)) & (int(match.group(2)) - 1):
    raise LaunchError(f"--accelerator_type: unknown TPU type '{accelerator_type}'; use "
                      f"FAMILY-SIZE with FAMILY in {', '.join(FAMILIES)} and a power-of-two SIZE "
                      "(e.g. v4-8, v5litepod-16, v4-32)")
  family, size = match.group(1), int(match.group(2))
  if family in ("v5litepod", "v6e"):
    return 1 if size <= 8 else size // 4
  if size < 8:
    raise LaunchError(f"--accelerator_type: {accelerator_type} is too small; {family} slices "
                      "start at 8 cores")
  return size // 8


class Gcloud:
  """Runs (or, with dry_run, prints) gcloud commands; remembers what it ran."""

  def __init__(self, dry_run: bool, printer: Callable[[str], None] = print):
    self.dry_run = dry_run
    self.printer = printer
    self.history: list[list[str]] = []

  def check_ready(self) -> None:
    """gcloud must be installed and authenticated (skipped in dry runs)."""
    if self.dry_run:
      return
    if shutil.which("gcloud") is None:
      raise LaunchError("gcloud is not installed: see https://cloud.google.com/sdk/docs/install")
    accounts = self.output(["auth", "list", "--filter=status:ACTIVE", "--format=value(account)"])
    if not accounts.strip():
      raise LaunchError("gcloud is not authenticated: run `gcloud auth login`")

  def run(self, args: Sequence[str], check: bool = True) -> int:
    """Runs `gcloud ARGS` with its output passed through; returns the exit code."""
    command = ["gcloud", *args]
    self.history.append(command)
    if self.dry_run:
      self.printer(shlex.join(command))
      return 0
    code = subprocess.run(command).returncode
    if check and code:
      raise LaunchError(f"`{shlex.join(command)}` failed with exit code {code}")
    return code

  def output(self, args: Sequence[str]) -> str:
    """Runs `gcloud ARGS` and returns its standard output ('' if it failed)."""
    command = ["gcloud", *args]
    self.history.append(command)
    if self.dry_run:
      self.printer(shlex.join(command))
      return ""
    result = subprocess.run(command, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


class TpuVm:
  """One TPU VM (or queued resource) and the commands that act on it."""

  def __init__(self, gcloud: Gcloud, options: argparse.Namespace):
    if not ZONE.match(options.zone or ""):
      raise LaunchError(f"--zone: '{options.zone}' is not a zone like us-central2-b")
    self.gcloud, self.options = gcloud, options
    self.hosts = num_hosts(options.accelerator_type)

  def _scope(self) -> list[str]:
    scope = [f"--zone={self.options.zone}"]
    return scope + ([f"--project={self.options.project}"] if self.options.project else [])

  def create(self) -> None:
    """Creates the VM (or queues the resource) with the chosen provisioning model."""
    o = self.options
    provisioning = {"spot": ["--spot"], "preemptible": ["--preemptible"], "on-demand": []}
    if o.queued:
      self.gcloud.run(["compute", "tpus", "queued-resources", "create", o.name,
                       f"--node-id={o.name}", f"--accelerator-type={o.accelerator_type}",
                       f"--runtime-version={o.runtime_version}", *self._scope(),
                       *provisioning[o.provisioning]])
    else:
      self.gcloud.run(["compute", "tpus", "tpu-vm", "create", o.name,
                       f"--accelerator-type={o.accelerator_type}", f"--version={o.runtime_version}",
                       *self._scope(), *provisioning[o.provisioning]])

  def state(self) -> str:
    """READY, CREATING, PREEMPTED, ... or NOT_FOUND."""
    o = self.options
    if o.queued:
      raw = self.gcloud.output(["compute", "tpus", "queued-resources", "describe", o.name,
                                *self._scope(), "--format=value(state.state)"]).strip()
      return QUEUED_STATES.get(raw, raw) if raw else GONE
    raw = self.gcloud.output(["compute", "tpus", "tpu-vm", "describe", o.name, *self._scope(),
                              "--format=value(state)"]).strip()
    return raw or GONE

  def ssh(self, command: str, worker: str = "all", check: bool = True) -> int:
    """Runs a shell command on the workers."""
    return self.gcloud.run(["compute", "tpus", "tpu-vm", "ssh", self.options.name,
                            *self._scope(), f"--worker={worker}", f"--command={command}"],
                           check=check)

  def setup(self) -> None:
    """Code on every worker, installed with jax[tpu]; fails unless every worker sees its TPU."""
    o = self.options
    if o.repo:
      fetch = (f"(test -d ~/transformer && git -C ~/transformer pull) || "
               f"git clone {shlex.quote(o.repo)} ~/transformer")
    else:
      self.gcloud.run(["compute", "tpus", "tpu-vm", "scp", "--recurse", REPO,
                       f"{o.name}:~/transformer", *self._scope(), "--worker=all"])
      fetch = "true"
    check = ("python3 -c 'import jax; n = jax.local_device_count(); "
             "assert n > 0 and jax.devices()[0].platform == \"tpu\", n; print(\"TPU devices:\", n)'")
    self.ssh(f"{fetch} && cd ~/transformer && pip install -q -e . && "
             f"pip install -q 'jax[tpu]' && {check}")

  def train_command(self, extra: Sequence[str] = ()) -> str:
    """The training command every worker runs (in the background, logging to a file)."""
    o = self.options
    if self.hosts > 1 and not o.workdir.startswith("gs://"):
      raise LaunchError(f"--workdir: a {self.hosts}-host run needs a gs:// workdir shared by all "
                        f"workers, not '{o.workdir}'")
    flags = [f"--config={o.config}", f"--workdir={o.workdir}", *extra,
             *(f"--{override}" for override in o.override)]
    if o.data_dir:
      flags.append(f"--config.data.data_dir={o.data_dir}")
    if self.hosts > 1:
      flags.append("--multihost")
    main = shlex.join(["python3", "-m", "transformer.main", *flags])
    return f"cd ~/transformer && nohup {main} > {LOG} 2>&1 &"

  def start_training(self) -> None:
    """Starts the configured run on all workers at once."""
    self.ssh(self.train_command())

  def stream_logs(self) -> None:
    """Follows worker 0's log."""
    self.ssh(f"tail -n 100 -f {LOG}", worker="0", check=False)

  def collect_logs(self, directory: str) -> None:
    """Copies every worker's log into `directory`."""
    os.makedirs(directory, exist_ok=True)
    for worker in range(self.hosts):
      self.gcloud.run(["compute", "tpus", "tpu-vm", "scp",
                       f"{self.options.name}:{LOG}",
                       os.path.join(directory, f"worker{worker}.log"), *self._scope(),
                       f"--worker={worker}"], check=False)

  def training_running(self) -> bool:
    """Whether worker 0 still runs the trainer."""
    return self.ssh("pgrep -f transformer.main > /dev/null", worker="0", check=False) == 0

  def stop(self) -> None:
    """Stops the VM (keeps its disk); queued resources can only be deleted."""
    self.gcloud.run(["compute", "tpus", "tpu-vm", "stop", self.options.name, *self._scope()])

  def delete(self) -> None:
    """Deletes the VM or queued resource."""
    if self.options.queued:
      self.gcloud.run(["compute", "tpus", "queued-resources", "delete", self.options.name,
                       *self._scope(), "--force", "--quiet"], check=False)
    else:
      self.gcloud.run(["compute", "tpus", "tpu-vm", "delete", self.options.name, *self._scope(),
                       "--quiet"], check=False)

  def wait_until_ready(self, poll_seconds: float, max_polls: int) -> None:
    """Polls the state until READY."""
    for _ in range(max_polls):
      state = self.state()
      if state == READY or self.gcloud.dry_run:
        return
      if state in (PREEMPTED, GONE):
        raise LaunchError(f"{self.options.name} became {state} while starting")
      time.sleep(poll_seconds)
    raise LaunchError(f"{self.options.name} not READY after {max_polls} polls")


def watch(vm: TpuVm, poll_seconds: float, max_polls: int,
          printer: Callable[[str], None] = print) -> int:
  """Keeps a run alive: a preempted or vanished VM is recreated, set up and the run restarted
  (it resumes from the last checkpoint in the gs:// workdir). Returns the number of restarts once
  the trainer has exited on a READY VM."""
  restarts = 0
  for _ in range(max_polls):
    state = vm.state()
    if state in (PREEMPTED, GONE, "TERMINATED"):
      printer(f"{vm.options.name} is {state}: recreating and resuming")
      vm.delete()
      vm.create()
      vm.wait_until_ready(poll_seconds, max_polls)
      vm.setup()
      vm.start_training()
      restarts += 1
    elif state == READY and not vm.training_running():
      printer(f"{vm.options.name}: training finished (restarts: {restarts})")
      return restarts
    time.sleep(poll_seconds)
  raise LaunchError(f"watch: gave up after {max_polls} polls")


def sweep_launcher(vms: "queue.Queue[TpuVm]", poll_seconds: float) -> Callable[[list[str], str],
                                                                                   int]:
  """A `experiments.sweep` launcher that trains each point on a free VM and waits for it."""

  def launch(argv: list[str], log_path: str) -> int:
    del log_path  # logs stay on the VM (`logs --collect`)
    vm = vms.get()
    try:
      flags = [arg for arg in argv if arg.startswith("--config.")]
      config = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--config="))
      workdir = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--workdir="))
      vm.options.config, vm.options.workdir = config, workdir
      vm.ssh(vm.train_command(flags))
      while vm.training_running():
        time.sleep(poll_seconds)
      return 0
    finally:
      vms.put(vm)

  return launch


def load_defaults(path: str | None) -> dict[str, Any]:
  """Flag defaults from a JSON launch config."""
  if not path:
    return {}
  try:
    with open(path, encoding="utf-8") as handle:
      return json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise LaunchError(f"--launch_config: cannot read {path}: {error}") from None


def parse(argv: Sequence[str]) -> argparse.Namespace:
  """Command-line flags, defaults from `--launch_config`."""
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--launch_config")
  known, _ = pre.parse_known_args(argv)
  defaults = load_defaults(known.launch_config)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=["create", "setup", "run", "logs", "status", "stop",
                                          "delete", "watch", "sweep"])
  parser.add_argument("--launch_config", help="JSON file with defaults for these flags")
  parser.add_argument("--name", default="transformer", help="TPU VM name (sweep: prefix)")
  parser.add_argument("--zone", default=None, help="e.g. us-central2-b")
  parser.add_argument("--project", default=None)
  parser.add_argument("--accelerator_type", default="v4-8")
  parser.add_argument("--runtime_version", default="tpu-ubuntu2204-base")
  parser.add_argument("--provisioning", choices=["on-demand", "spot", "preemptible"],
                      default="on-demand")
  parser.add_argument("--queued", action="store_true", help="use a queued resource")
  parser.add_argument("--repo", default="", help="git URL to clone (default: copy this checkout)")
  parser.add_argument("--config", default="experiments/configs/wmt14_base.py")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--data_dir", default="", help="tfds data_dir (gs://...)")
  parser.add_argument("--override", action="append", default=[],
                      help="config.FIELD=VALUE passed to the trainer (repeatable)")
  parser.add_argument("--collect", default="", help="logs: copy every worker's log here")
  parser.add_argument("--sweep", default="", help="sweep: experiments/sweeps/FILE.py[:ARG]")
  parser.add_argument("--num_vms", type=int, default=1, help="sweep: VMs used in parallel")
  parser.add_argument("--only", default="", help="sweep: comma-separated point names")
  parser.add_argument("--poll_seconds", type=float, default=60.0)
  parser.add_argument("--max_polls", type=int, default=10_000)
  parser.add_argument("--dry_run", action="store_true", help="print the gcloud commands only")
  parser.set_defaults(**defaults)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  options = parse(sys.argv[1:] if argv is None else argv)
  gcloud = Gcloud(options.dry_run)
  try:
    gcloud.check_ready()
    if options.command == "sweep":
      run_sweep_on_vms(gcloud, options)
      return
    vm = TpuVm(gcloud, options)
    if options.command == "run" and not options.workdir:
      raise LaunchError("--workdir is required (gs://BUCKET/PATH)")
    actions = {
        "create": vm.create, "setup": vm.setup, "stop": vm.stop, "delete": vm.delete,
        "run": lambda: (vm.start_training(), vm.stream_logs()),
        "logs": lambda: vm.collect_logs(options.collect) if options.collect else vm.stream_logs(),
        "status": lambda: print(vm.state()),
        "watch": lambda: watch(vm, options.poll_seconds, options.max_polls),
    }
    actions[options.command]()
  except LaunchError as error:
    raise SystemExit(f"error: {error}") from None


def run_sweep_on_vms(gcloud: Gcloud, options: argparse.Namespace) -> None:
  """Creates `--num_vms` VMs, runs the sweep's points on them, collects results and report."""
  from experiments import report, sweep  # the sweep runner is shared with local runs

  if not options.workdir.startswith("gs://"):
    raise LaunchError("sweep: --workdir must be a gs:// root shared with the VMs")
  definition = sweep.load_sweep(options.sweep)
  sweep.validate(definition)
  if gcloud.dry_run:  # the commands each point would run, round-robin over the VMs
    for index, point in enumerate(definition["points"]):
      vm = TpuVm(gcloud, argparse.Namespace(**{
          **vars(options), "name": f"{options.name}-{index % options.num_vms}",
          "config": definition["config"],
          "workdir": os.path.join(options.workdir, point["name"])}))
      argv = sweep.command(definition, point, vm.options.workdir)
      vm.ssh(vm.train_command([a for a in argv if a.startswith("--config.")]))
    return
  vms: "queue.Queue[TpuVm]" = queue.Queue()
  for index in range(options.num_vms):
    vm = TpuVm(gcloud, argparse.Namespace(**{**vars(options), "name": f"{options.name}-{index}"}))
    vm.create()
    vm.wait_until_ready(options.poll_seconds, options.max_polls)
    vm.setup()
    vms.put(vm)
  only = {name for name in options.only.split(",") if name} or None
  sweep.run_sweep(definition, options.workdir, only, options.num_vms,
                  sweep_launcher(vms, options.poll_seconds))
  print(report.write_report(options.workdir))


if __name__ == "__main__":
  main()
