"""One Cloud TPU VM (or queued resource) and what the launcher does with it, over `gcloud`.

The trainer runs on every worker under `launch/job.sh`, which records its pid and, when it ends,
its exit code; the launcher reads that state file instead of matching process names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Sequence

from launch.job import Job
from transformer import tpu_slices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZONE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")
READY, PREEMPTED, GONE = "READY", "PREEMPTED", "NOT_FOUND"
LOST_STATES = (PREEMPTED, GONE, "TERMINATED")
# Queued-resource states mapped onto TPU VM states.
QUEUED_STATES = {"ACTIVE": READY, "SUSPENDED": PREEMPTED, "FAILED": PREEMPTED,
                 "WAITING_FOR_RESOURCES": "CREATING", "PROVISIONING": "CREATING",
                 "ACCEPTED": "CREATING"}
LOG = "~/transformer_train.log"
JOB_DIR = "~/.transformer_job"
CODE_ARCHIVE = "transformer.tar.gz"
# Provisioning flags: a TPU VM and a queued resource accept different ones.
VM_PROVISIONING = {"on-demand": [], "spot": ["--spot"], "preemptible": ["--preemptible"],
                   "reserved": ["--reserved"]}
QUEUED_PROVISIONING = {"on-demand": [], "spot": ["--spot"], "reserved": ["--reserved"],
                       "guaranteed": ["--guaranteed"]}


def shared_root(path: str) -> bool:
  """Whether every VM and this machine see `path` (watch and sweep roots must)."""
  return path.startswith("gs://")


class LaunchError(RuntimeError):
  """Bad input or environment: the message says what to do."""


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


@dataclasses.dataclass(frozen=True)
class JobState:
  """The trainer's state over all workers: running, exited (with a code), lost or none."""

  kind: str
  exit_code: int | None = None

  @classmethod
  def parse(cls, output: str, workers: int) -> "JobState":
    """Combines the `job.sh state` lines of every worker (missing lines: unreachable)."""
    lines = [line.split() for line in output.splitlines()
             if line.split() and line.split()[0] in ("running", "exited", "lost", "none")]
    if len(lines) < workers:
      return cls("lost")
    if any(words[0] == "running" for words in lines):
      return cls("running")
    if all(words[0] == "exited" for words in lines):
      codes = [int(words[1]) for words in lines]
      return cls("exited", next((code for code in codes if code), 0))
    return cls("none" if all(words[0] == "none" for words in lines) else "lost")


def code_archive(directory: str) -> str:
  """A tarball of this checkout's tracked files (as in the working tree) plus a COMMIT stamp.

  Never `.venv/`, `runs/`, checkpoints or caches: only what `git ls-files` lists.
  """
  files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                         check=True).stdout.decode().split("\0")
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(directory, "COMMIT"), "w", encoding="utf-8") as handle:
    handle.write(f"{commit} {'dirty' if dirty else 'clean'}\n")
  archive = os.path.join(directory, CODE_ARCHIVE)
  listed = [name for name in files if name and os.path.exists(os.path.join(REPO, name))]
  subprocess.run(["tar", "-czf", archive, "-C", REPO, *listed, "-C", directory, "COMMIT"],
                 check=True)
  return archive


def setup_script() -> str:
  """What `setup` runs on every worker: unpack the code, a pinned Python >= 3.11 environment.

  The TPU VM images ship Python 3.10; `uv` installs 3.11 and the versions CI tests
  (constraints.txt), with `libtpu` from the `[tpu]` extra; the last line checks the chips.
  """
  check = ("import jax; n = jax.local_device_count(); "
           "assert jax.devices()[0].platform == 'tpu', jax.devices(); print('TPU devices:', n)")
  return " && ".join([
      "set -e",
      f"rm -rf ~/transformer && mkdir -p ~/transformer && tar -xzf ~/{CODE_ARCHIVE} -C "
      "~/transformer",
      "export PATH=$HOME/.local/bin:$PATH",
      "(command -v uv > /dev/null || python3 -m pip install --user --quiet uv)",
      "cd ~/transformer",
      "uv venv --quiet --python 3.11 .venv",
      "uv pip install --quiet --python .venv/bin/python -c constraints.txt -e '.[tpu]'",
      f".venv/bin/python -c {shlex.quote(check)}",
  ])


class TpuVm:
  """One TPU VM (or queued resource) and the commands that act on it."""

  def __init__(self, gcloud: Gcloud, options: argparse.Namespace):
    self.gcloud, self.options = gcloud, options
    try:
      self.chip = tpu_slices.generation_of(options.accelerator_type)
    except ValueError:
      raise LaunchError(f"--accelerator_type: unknown TPU type '{options.accelerator_type}'; "
                        f"known: {tpu_slices.known_types()}") from None
    self.hosts = tpu_slices.num_hosts(options.accelerator_type)

  @property
  def name(self) -> str:
    """The VM's (and queued resource's) name."""
    return self.options.name

  def _scope(self) -> list[str]:
    scope = [f"--zone={self.options.zone}"]
    return scope + ([f"--project={self.options.project}"] if self.options.project else [])

  def runtime_version(self) -> str:
    """`--runtime_version`, or the TPU VM image of this TPU generation."""
    return self.options.runtime_version or self.chip.runtime_version

  def create(self) -> None:
    """Creates the VM (or queues the resource) with the chosen provisioning model."""
    o = self.options
    table = QUEUED_PROVISIONING if o.queued else VM_PROVISIONING
    if o.provisioning not in table:
      kind = "queued resources (--queued)" if o.queued else "TPU VMs (without --queued)"
      raise LaunchError(f"--provisioning={o.provisioning} is not available for {kind}; use one "
                        f"of {', '.join(table)}")
    if o.queued:
      self.gcloud.run(["compute", "tpus", "queued-resources", "create", o.name,
                       f"--node-id={o.name}", f"--accelerator-type={o.accelerator_type}",
                       f"--runtime-version={self.runtime_version()}", *self._scope(),
                       *table[o.provisioning]])
    else:
      self.gcloud.run(["compute", "tpus", "tpu-vm", "create", o.name,
                       f"--accelerator-type={o.accelerator_type}",
                       f"--version={self.runtime_version()}", *self._scope(),
                       *table[o.provisioning]])

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
    return self.gcloud.run(["compute", "tpus", "tpu-vm", "ssh", self.name, *self._scope(),
                            f"--worker={worker}", f"--command={command}"], check=check)

  def setup(self) -> None:
    """This checkout's tracked files on every worker, a pinned environment, a TPU check."""
    with tempfile.TemporaryDirectory() as directory:
      archive = os.path.join(directory, CODE_ARCHIVE) if self.gcloud.dry_run else \
          code_archive(directory)
      self.gcloud.run(["compute", "tpus", "tpu-vm", "scp", archive, f"{self.name}:~/",
                       *self._scope(), "--worker=all"])
    self.ssh(setup_script())

  def train_command(self, job: Job) -> str:
    """The command every worker runs: the job's trainer under job.sh, in the pinned
    environment, with this launch's `--data_dir` and `--override`s and, on a multi-host slice,
    `--multihost`."""
    o = self.options
    if self.hosts > 1 and not job.workdir.startswith("gs://"):
      raise LaunchError(f"--workdir: a {self.hosts}-host run needs a gs:// workdir shared by all "
                        f"workers, not '{job.workdir}'")
    launch_flags = [f"--{override}" for override in o.override]
    if o.data_dir:
      launch_flags.append(f"--config.data.data_dir={o.data_dir}")
    job = job.with_flags(*launch_flags, *(["--multihost"] if self.hosts > 1 else []))
    main = shlex.join(job.argv(python=".venv/bin/python"))
    return f"cd ~/transformer && launch/job.sh start {JOB_DIR} {LOG} -- {main}"

  def start_training(self, job: Job) -> None:
    """Starts the job on all workers at once."""
    self.ssh(self.train_command(job))

  def job_state(self) -> JobState:
    """The trainer's state on every worker, from job.sh's state files."""
    output = self.gcloud.output(["compute", "tpus", "tpu-vm", "ssh", self.name, *self._scope(),
                                 "--worker=all",
                                 f"--command=~/transformer/launch/job.sh state {JOB_DIR}"])
    return JobState.parse(output, self.hosts)

  def stream_logs(self) -> None:
    """Follows worker 0's log until its trainer ends."""
    self.ssh(f"tail -n 100 -f {LOG} --pid=$(cat {JOB_DIR}/pid)", worker="0", check=False)

  def collect_logs(self, directory: str) -> None:
    """Copies every worker's log into `directory`."""
    os.makedirs(directory, exist_ok=True)
    for worker in range(self.hosts):
      self.gcloud.run(["compute", "tpus", "tpu-vm", "scp", f"{self.name}:{LOG}",
                       os.path.join(directory, f"worker{worker}.log"), *self._scope(),
                       f"--worker={worker}"], check=False)

  def stop(self) -> None:
    """Stops a single-host VM (keeps its disk); slices and queued resources can only be deleted."""
    if self.options.queued:
      raise LaunchError("stop: a queued resource cannot be stopped, only deleted (`delete`)")
    if self.hosts > 1:
      raise LaunchError(f"stop: a {self.hosts}-host slice cannot be stopped, only deleted "
                        "(`delete`)")
    self.gcloud.run(["compute", "tpus", "tpu-vm", "stop", self.name, *self._scope()])

  def delete(self) -> None:
    """Deletes the VM or queued resource."""
    if self.options.queued:
      self.gcloud.run(["compute", "tpus", "queued-resources", "delete", self.name,
                       *self._scope(), "--force", "--quiet"], check=False)
    else:
      self.gcloud.run(["compute", "tpus", "tpu-vm", "delete", self.name, *self._scope(),
                       "--quiet"], check=False)

  def wait_until_ready(self) -> None:
    """Polls the state until READY."""
    for _ in range(self.options.max_polls):
      state = self.state()
      if state == READY or self.gcloud.dry_run:
        return
      if state in LOST_STATES:
        raise LaunchError(f"{self.name} became {state} while starting")
      time.sleep(self.options.poll_seconds)
    raise LaunchError(f"{self.name} not READY after {self.options.max_polls} polls")

  def recreate(self) -> None:
    """A preempted or vanished VM deleted, created again, set up."""
    self.delete()
    self.create()
    self.wait_until_ready()
    self.setup()


def run_to_completion(vm: TpuVm, job: Job, printer: Callable[[str], None] = print,
                      start: bool = True) -> tuple[int, int]:
  """Runs (or, with start=False, follows) the job's trainer until it exits on a READY VM.

  A preempted or vanished VM is recreated and the job started again; it resumes from the last
  checkpoint in the gs:// workdir. Returns (exit code, restarts).
  """
  if start:
    vm.start_training(job)
  restarts, lost_before = 0, False
  for _ in range(vm.options.max_polls):
    if vm.gcloud.dry_run:
      return 0, 0
    state = vm.state()
    if state in LOST_STATES:
      printer(f"{vm.name} is {state}: recreating and resuming")
      vm.recreate()
      vm.start_training(job)
      restarts += 1
    elif state == READY:
      trainer = vm.job_state()
      if trainer.kind == "exited":
        return trainer.exit_code, restarts
      if trainer.kind == "none":
        raise LaunchError(f"{vm.name}: no trainer was started there (use `run` first)")
      # Died without an exit code: the VM went down under it (then the next poll sees it) or
      # restarted. Twice in a row on a READY VM: start the trainer again.
      if trainer.kind == "lost" and lost_before:
        printer(f"{vm.name}: the trainer vanished without an exit code: starting it again")
        vm.start_training(job)
        restarts += 1
      lost_before = trainer.kind == "lost"
    time.sleep(vm.options.poll_seconds)
  raise LaunchError(f"{vm.name}: gave up after {vm.options.max_polls} polls")
