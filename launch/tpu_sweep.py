"""A sweep on Cloud TPU VMs: `python -m launch.tpu sweep --sweep=... --num_vms=N --workdir=gs://`.

The local sweep runner (`experiments/sweep.py`) decides what runs, retries failures and records
results; here each point runs on a free VM until its trainer exits. A VM preempted under a point
is recreated and the point restarted (it resumes from its gs:// checkpoints; preemptions are not
failures and use no retry). VMs are deleted at the end unless `--keep_vms`.
"""

from __future__ import annotations

import argparse
import os
import queue
from typing import Callable

from experiments import report, sweep
from launch import vm as vm_lib
from launch.job import Job
from launch.vm import Gcloud, TpuVm


def vm_options(options: argparse.Namespace, index: int) -> argparse.Namespace:
  """The options of the sweep's VM number `index`."""
  return argparse.Namespace(**{**vars(options), "name": f"{options.name}-{index}"})


def launcher(vms: "queue.Queue[TpuVm]", printer: Callable[[str], None] = print
             ) -> sweep.Launcher:
  """A sweep launcher that runs each job (a point's training or a finish step) on a free VM
  and returns its trainer's exit code."""

  def launch(job: Job, log_path: str) -> int:
    del log_path  # logs stay on the VM (`logs --collect`)
    vm = vms.get()
    try:
      code, restarts = vm_lib.run_to_completion(vm, job, printer)
      if restarts:
        printer(f"{vm.name}: {os.path.basename(job.workdir)} ({job.mode}) survived {restarts} "
                "preemption(s)")
      return code
    finally:
      vms.put(vm)

  return launch


def run_sweep_on_vms(gcloud: Gcloud, options: argparse.Namespace) -> None:
  """Creates `--num_vms` VMs, runs the sweep's points on them, deletes them, writes the report."""
  try:
    definition = sweep.with_seeds(sweep.load_sweep(options.sweep),
                                  sweep.parse_seeds(options.seeds))
    sweep.validate(definition)
    only = sweep.selected(definition, {name for name in options.only.split(",") if name})
  except sweep.SweepError as error:
    raise vm_lib.LaunchError(str(error)) from None
  vms = [TpuVm(gcloud, vm_options(options, index)) for index in range(options.num_vms)]
  if gcloud.dry_run:
    print_dry_run(definition, options, vms, only)
    return
  free: "queue.Queue[TpuVm]" = queue.Queue()
  try:
    for vm in vms:
      vm.create()
      vm.wait_until_ready()
      vm.setup()
      free.put(vm)
    sweep.run_sweep(definition, options.workdir, only, options.num_vms, launcher(free),
                    retries=options.retries)
  except (sweep.SweepError, sweep.PointFailed) as error:
    raise vm_lib.LaunchError(str(error)) from None
  finally:
    if not options.keep_vms:
      for vm in vms:
        vm.delete()
  print(report.write_report(options.workdir))


def print_dry_run(definition: dict, options: argparse.Namespace, vms: list[TpuVm],
                  only: set[str] | None) -> None:
  """The whole sequence: create and set up each VM, one run per point (round robin), delete."""
  for vm in vms:
    vm.create()
    vm.setup()
  points = [p for p in definition["points"] if not only or p["name"] in only]
  for index, point in enumerate(points):
    workdir = os.path.join(options.workdir, point["name"])
    for job in [sweep.training_job(definition, point, workdir),
                *sweep.finish_jobs(definition, point, workdir)]:
      vms[index % len(vms)].start_training(job)
  if not options.keep_vms:
    for vm in vms:
      vm.delete()
