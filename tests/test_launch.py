"""The TPU launcher against a fake `gcloud` first on PATH: VMs are directories, ssh runs bash in a
worker's home, the trainer is a stub that plays scripted outcomes (tests/fake_gcloud)."""

import json
import os
import subprocess
import sys
import tarfile
import types

import pytest

from experiments import report
from launch import tpu, vm as vm_lib
from launch.job import Job
from transformer import tpu_slices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(REPO, "tests", "fake_gcloud")
BASE = ["--name=mt", "--zone=us-central2-b", "--poll_seconds=0", "--max_polls=200"]


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  """Puts the fake first on PATH; returns helpers to script the trainer and read the calls."""
  log = tmp_path / "calls.jsonl"
  log.touch()
  monkeypatch.setenv("PATH", FAKE + os.pathsep + os.environ["PATH"])
  monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))
  monkeypatch.setenv("FAKE_GCLOUD_DIR", str(tmp_path / "cloud"))
  monkeypatch.setenv("FAKE_TRAINER_PLAN", str(tmp_path / "plan"))
  monkeypatch.delenv("FAKE_GCLOUD_NO_AUTH", raising=False)

  class Fake:
    root = tmp_path / "cloud" / "vms"

    def plan(self, *outcomes):
      (tmp_path / "plan").write_text("\n".join(outcomes + ("ok",)) + "\n")

    def calls(self):
      return [json.loads(line) for line in log.read_text().splitlines()]

    def verbs(self):
      """The gcloud sub-commands called (auth checks dropped)."""
      return [" ".join(call[2:4]) for call in self.calls() if call[:2] != ["auth", "list"]]

    def starts(self):
      return [c for c in self.calls() if "ssh" in c and "job.sh start" in c[-1]]

  return Fake()


def test_accelerator_types_hosts_and_runtime_versions(fake_gcloud, capsys):
  assert [tpu_slices.num_hosts(t) for t in ("v4-8", "v4-32", "v5litepod-8", "v5litepod-16",
                                     "v5p-64", "v6e-32")] == [1, 4, 1, 4, 8, 8]
  for accelerator, runtime in (("v4-8", "tpu-ubuntu2204-base"),
                               ("v5litepod-8", "v2-alpha-tpuv5-lite"),
                               ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")):
    tpu.main(["create", *BASE, f"--accelerator_type={accelerator}", "--dry_run"])
    assert f"--version={runtime}" in capsys.readouterr().out
  tpu.main(["create", *BASE, "--runtime_version=custom-image", "--dry_run"])
  assert "--version=custom-image" in capsys.readouterr().out
  for bad in ("v4-7x", "v9-8", "tpu"):
    with pytest.raises(SystemExit, match="--accelerator_type: unknown TPU type"):
      tpu.main(["create", *BASE, f"--accelerator_type={bad}", "--dry_run"])


def test_queued_resources_take_their_own_provisioning_flags(fake_gcloud, capsys):
  for provisioning in ("spot", "guaranteed", "reserved"):
    tpu.main(["create", *BASE, "--queued", f"--provisioning={provisioning}", "--dry_run"])
    printed = capsys.readouterr().out
    assert printed.startswith("gcloud compute tpus queued-resources create mt ")
    assert f" --{provisioning}" in printed
  with pytest.raises(SystemExit, match="--provisioning=preemptible is not available for queued"):
    tpu.main(["create", *BASE, "--queued", "--provisioning=preemptible", "--dry_run"])
  with pytest.raises(SystemExit, match="--provisioning=guaranteed is not available for TPU VMs"):
    tpu.main(["create", *BASE, "--provisioning=guaranteed", "--dry_run"])


def test_stop_is_refused_for_slices_and_queued_resources(fake_gcloud):
  with pytest.raises(SystemExit, match="stop: a 4-host slice cannot be stopped, only deleted"):
    tpu.main(["stop", *BASE, "--accelerator_type=v4-32"])
  with pytest.raises(SystemExit, match="stop: a queued resource cannot be stopped"):
    tpu.main(["stop", *BASE, "--queued"])
  assert fake_gcloud.verbs() == []


def test_single_host_create_setup_run(fake_gcloud, tmp_path):
  for command in ("create", "setup"):
    tpu.main([command, *BASE, "--accelerator_type=v4-8", "--provisioning=spot"])
  home = fake_gcloud.root / "mt" / "worker0"
  code = home / "transformer"
  assert (code / "launch" / "job.sh").exists() and (code / "constraints.txt").exists()
  assert (code / ".venv" / "bin" / "python").exists()  # the pinned environment
  listed = tarfile.open(home / "transformer.tar.gz").getnames()
  assert not any(name.startswith((".venv", "runs/", ".git/")) for name in listed)
  assert (code / "COMMIT").read_text().split()[1] in ("clean", "dirty")
  setup = next(c for c in fake_gcloud.calls() if "ssh" in c and "uv venv" in c[-1])
  assert "--python 3.11" in setup[-1] and "-c constraints.txt -e '.[tpu]'" in setup[-1]
  workdir = tmp_path / "run"
  tpu.main(["run", *BASE, "--accelerator_type=v4-8", f"--workdir={workdir}",
            "--data_dir=gs://b/tfds"])
  start = fake_gcloud.starts()[0][-1]
  assert "--config.data.data_dir=gs://b/tfds" in start and "--multihost" not in start
  assert "tail -n 100 -f" in fake_gcloud.calls()[-1][-1]  # logs until the trainer ends
  vm = vm_lib.TpuVm(vm_lib.Gcloud(False), tpu.parse(["status", *BASE]))
  assert vm.job_state() == vm_lib.JobState("exited", 0)
  assert (workdir / "checkpoints" / "20").is_dir()


def test_multi_host_run_needs_gs_workdir_and_initializes_jax_distributed(fake_gcloud, capsys):
  with pytest.raises(SystemExit, match="a 4-host run needs a gs:// workdir"):
    tpu.main(["run", *BASE, "--accelerator_type=v4-32", "--workdir=/tmp/local", "--dry_run"])
  tpu.main(["run", *BASE, "--accelerator_type=v4-32", "--workdir=gs://b/runs/big", "--dry_run",
            "--config=experiments/configs/wmt14_big.py", "--override=config.train.num_steps=10"])
  start = capsys.readouterr().out.splitlines()[0]
  for flag in ("--worker=all", "--multihost", "--workdir=gs://b/runs/big",
               "--config.train.num_steps=10", "--config=experiments/configs/wmt14_big.py",
               ".venv/bin/python -m transformer.main", "launch/job.sh start"):
    assert flag in start


def test_logs_are_collected_from_every_worker(fake_gcloud, tmp_path):
  tpu.main(["create", *BASE, "--accelerator_type=v4-32"])
  for worker in range(4):
    (fake_gcloud.root / "mt" / f"worker{worker}" / "transformer_train.log").write_text(f"w{worker}")
  tpu.main(["logs", *BASE, "--accelerator_type=v4-32", f"--collect={tmp_path / 'logs'}"])
  assert [(tmp_path / "logs" / f"worker{i}.log").read_text() for i in range(4)] == \
      ["w0", "w1", "w2", "w3"]


def test_job_state_comes_from_exit_codes_not_process_names(fake_gcloud, tmp_path):
  tpu.main(["create", *BASE])
  tpu.main(["setup", *BASE])
  vm = vm_lib.TpuVm(vm_lib.Gcloud(False), tpu.parse(["status", *BASE,
                                                     f"--workdir={tmp_path / 'w'}"]))
  assert vm.job_state() == vm_lib.JobState("none")
  fake_gcloud.plan("fail")
  code, restarts = vm_lib.run_to_completion(vm, tpu.job_of(vm.options))
  assert (code, restarts) == (1, 0)
  assert vm_lib.JobState.parse("running\nexited 0\n", 2).kind == "running"
  assert vm_lib.JobState.parse("exited 0\nexited 3\n", 2) == vm_lib.JobState("exited", 3)
  assert vm_lib.JobState.parse("exited 0\n", 2).kind == "lost"  # a worker did not answer


class ScriptedVm:
  """A VM whose polls play a script of (VM state, trainer state) pairs; records what it starts."""

  def __init__(self, script):
    self.script, self.started, self.name = list(script), [], "scripted"
    self.options = types.SimpleNamespace(max_polls=len(self.script), poll_seconds=0)
    self.gcloud = types.SimpleNamespace(dry_run=False)
    self.trainer = None

  def state(self):
    state, self.trainer = self.script.pop(0)
    return state

  def job_state(self):
    return self.trainer

  def recreate(self):
    pass

  def start_training(self, job):
    self.started.append(job)


def test_restarts_after_a_running_poll_start_the_same_job():
  """A poll that reads the trainer's state must not replace the job that restarts start."""
  job = Job("c.py", "gs://b/r", ("train.num_steps=5",), ("--mode=average",))
  running, lost = vm_lib.JobState("running"), vm_lib.JobState("lost")
  vm = ScriptedVm([("READY", running), ("PREEMPTED", None), ("READY", lost), ("READY", lost),
                   ("READY", vm_lib.JobState("exited", 0))])
  assert vm_lib.run_to_completion(vm, job, printer=lambda line: None) == (0, 2)
  assert vm.started == [job, job, job]  # the first start, after the preemption, after "lost" x2


def test_watch_recreates_a_preempted_vm_and_ends_when_the_trainer_exits(fake_gcloud, capsys):
  run = [*BASE, "--provisioning=spot", "--workdir=gs://b/run"]
  tpu.main(["create", *run])
  tpu.main(["setup", *run])
  fake_gcloud.plan("preempt")  # the first trainer dies with its VM; the restarted one finishes
  options = tpu.parse(["run", *run])
  vm = vm_lib.TpuVm(vm_lib.Gcloud(False), options)
  vm.start_training(tpu.job_of(options))
  assert tpu.watch(vm, tpu.job_of(options)) == 1
  verbs = fake_gcloud.verbs()
  restart = verbs.index("tpu-vm delete")
  assert verbs[restart + 1] == "tpu-vm create"
  assert len(fake_gcloud.starts()) == 2
  assert (fake_gcloud.root / "mt" / "worker0" / "transformer" / ".venv").exists()  # set up again
  assert "training finished (restarts: 1)" in capsys.readouterr().out


def test_watch_refuses_local_workdirs_reports_failures_and_stops_in_dry_runs(fake_gcloud, capsys):
  with pytest.raises(SystemExit, match="watch: --workdir must be on gs://"):
    tpu.main(["watch", *BASE, "--workdir=/tmp/run"])
  tpu.main(["create", *BASE, "--queued"])
  tpu.main(["status", *BASE, "--queued"])  # PROVISIONING, then ACTIVE
  tpu.main(["setup", *BASE, "--queued"])
  fake_gcloud.plan("fail")
  options = tpu.parse(["run", *BASE, "--queued", "--workdir=gs://b/r"])
  vm_lib.TpuVm(vm_lib.Gcloud(False), options).start_training(tpu.job_of(options))
  with pytest.raises(SystemExit, match="the trainer exited with code 1"):
    tpu.main(["watch", *BASE, "--queued", "--workdir=gs://b/r"])
  capsys.readouterr()
  tpu.main(["watch", *BASE, "--workdir=gs://b/r", "--dry_run", "--max_polls=100000"])
  assert len(capsys.readouterr().out.splitlines()) <= 2


def test_sweep_on_two_vms_survives_a_failure_and_a_preemption(fake_gcloud, tmp_path,
                                                              monkeypatch):
  monkeypatch.setattr(vm_lib, "shared_root", lambda path: True)  # a local root stands for gs://
  sweep_file = tmp_path / "two.py"
  sweep_file.write_text(
      "def get_sweep():\n  return {'name': 'two', 'config': 'tests/tiny_config.py', 'points': "
      "[{'name': 'a', 'overrides': {'model.d_ff': 32}}, "
      "{'name': 'b', 'overrides': {'model.d_ff': 64}}]}\n")
  fake_gcloud.plan("fail", "preempt")
  root = tmp_path / "root"
  tpu.main(["sweep", *BASE, "--num_vms=2", f"--workdir={root}", f"--sweep={sweep_file}",
            "--retries=1"])
  rows = {row["point"]: row for row in report.read_results(str(root))}
  assert sorted(rows) == ["a", "b"]
  assert sorted(row["attempts"] for row in rows.values()) == [1, 2]  # one failure, one retry
  assert len(fake_gcloud.starts()) == 4  # 2 points + 1 retry + 1 restart after the preemption
  assert fake_gcloud.verbs().count("tpu-vm create") == 3  # 2 VMs + 1 recreated
  assert list(fake_gcloud.root.iterdir()) == []  # every VM deleted at the end
  assert all(row["config"]["model"]["d_ff"] in (32, 64) for row in rows.values())


def test_sweep_finish_steps_run_on_the_vm_in_order_and_fill_the_final_evaluation(
    fake_gcloud, tmp_path, monkeypatch):
  """Table 3's converged points average their last checkpoints and evaluate the average: the
  VM must receive those modes (not the training command again), in order."""
  monkeypatch.setattr(vm_lib, "shared_root", lambda path: True)
  sweep_file = tmp_path / "finish.py"
  sweep_file.write_text(
      "from experiments.sweeps import table3\n"
      "def get_sweep():\n  return {'name': 'f', 'config': 'tests/tiny_config.py', 'points': "
      "[{'name': 'a', 'overrides': {'model.d_ff': 32}}], "
      "'finish': table3.get_sweep('cpu_converged')['finish']}\n")
  root = tmp_path / "root"
  tpu.main(["sweep", *BASE, f"--workdir={root}", f"--sweep={sweep_file}"])
  commands = [call[-1] for call in fake_gcloud.starts()]
  assert len(commands) == 3
  assert "--mode" not in commands[0]
  assert "--config.eval.num_average=5 --mode=average" in commands[1]
  assert f"--mode=evaluate --checkpoint_dir={root}/a/averaged" in commands[2]
  assert all("--config.model.d_ff=32" in command for command in commands)
  row = report.read_results(str(root))[0]
  assert row["final_eval"]["bleu"] == 31.5
  assert row["final_eval"]["checkpoint"] == f"{root}/a/averaged"
  assert row["final_eval"]["split"] == "val"


def test_sweep_gives_up_after_the_retries_and_still_deletes_the_vms(fake_gcloud, tmp_path,
                                                                    monkeypatch):
  monkeypatch.setattr(vm_lib, "shared_root", lambda path: True)
  fake_gcloud.plan("fail", "fail")
  with pytest.raises(SystemExit, match="point 'base' failed 2 time"):
    tpu.main(["sweep", *BASE, f"--workdir={tmp_path / 'root'}", "--retries=1", "--only=base",
              "--sweep=experiments/sweeps/table3.py:cpu"])
  assert list(fake_gcloud.root.iterdir()) == []


def test_sweep_dry_run_prints_the_whole_sequence(fake_gcloud, capsys):
  tpu.main(["sweep", *BASE, "--dry_run", "--num_vms=2", "--workdir=gs://b/sweep",
            "--sweep=experiments/sweeps/table3.py:tpu", "--only=base,C_d1024,A_h1"])
  printed = capsys.readouterr().out.splitlines()
  kinds = [("create" if " create " in line else "delete" if " delete " in line else
            "setup" if "uv venv" in line or " scp " in line else
            "run" if "job.sh start" in line else line) for line in printed]
  # table3's tpu points have no finish steps: one run each.
  assert kinds == ["create", "setup", "setup", "create", "setup", "setup", "run", "run", "run",
                   "delete", "delete"]
  runs = [line for line in printed if "job.sh start" in line]
  assert ["mt-0" in runs[0], "mt-1" in runs[1], "mt-0" in runs[2]] == [True] * 3
  assert "gs://b/sweep/A_h1" in runs[1] and "C_d1024" in runs[2]
  assert fake_gcloud.calls() == []


def test_bad_input_is_one_line(fake_gcloud, monkeypatch, tmp_path):
  with pytest.raises(SystemExit, match="--zone: 'uscentral' is not a zone"):
    tpu.main(["create", "--name=mt", "--zone=uscentral"])
  with pytest.raises(SystemExit, match="unknown flag or argument '--acelerator_type=v4-8'; did "
                                       "you mean --accelerator_type"):
    tpu.main(["create", *BASE, "--acelerator_type=v4-8"])
  with pytest.raises(SystemExit, match="expected one command out of create"):
    tpu.main(["launch", *BASE])
  bad_json = tmp_path / "launch.json"
  bad_json.write_text('{"zone": "us-central2-b", "acclerator": "v4-8"}')
  with pytest.raises(SystemExit, match="--launch_config: unknown key 'acclerator'"):
    tpu.main(["status", f"--launch_config={bad_json}"])
  monkeypatch.setenv("FAKE_GCLOUD_NO_AUTH", "1")
  with pytest.raises(SystemExit, match="gcloud is not authenticated: run `gcloud auth login`"):
    tpu.main(["status", *BASE])
  monkeypatch.setenv("PATH", "/nonexistent")
  with pytest.raises(SystemExit, match="gcloud is not installed"):
    tpu.main(["status", *BASE])


def test_cli_entry_point_and_launch_config(fake_gcloud):
  tpu.main(["create", *BASE])
  result = subprocess.run([sys.executable, "-m", "launch.tpu", "status",
                           "--launch_config=launch/example.json", "--name=mt"], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ))
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "READY"


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--helpfull"], ["create", "--help"]])
def test_help_lists_the_commands_and_every_flag(args):
  result = subprocess.run([sys.executable, "-m", "launch.tpu", *args], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
  assert result.returncode == 0, result.stderr
  assert "Commands: create, setup, run, logs, status, stop, delete, watch, sweep" in result.stdout
  for flag, text in (("--accelerator_type", "v4-8, v4-32"), ("--dry_run", "gcloud commands"),
                     ("--num_vms", "VMs used in parallel")):
    assert flag in result.stdout and text in result.stdout
  assert result.stderr == ""
