"""The TPU launcher against a fake `gcloud` first on PATH (no cloud here)."""

import json
import os
import subprocess
import sys

import pytest

from launch import tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(REPO, "tests", "fake_gcloud")
BASE = ["--name=mt", "--zone=us-central2-b", "--poll_seconds=0", "--max_polls=50"]


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  """Puts the fake first on PATH; returns helpers to script states and read the calls."""
  log = tmp_path / "calls.jsonl"
  log.touch()
  monkeypatch.setenv("PATH", FAKE + os.pathsep + os.environ["PATH"])
  monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))
  monkeypatch.setenv("FAKE_GCLOUD_STATES", str(tmp_path / "states"))
  monkeypatch.setenv("FAKE_GCLOUD_RUNNING", str(tmp_path / "running"))

  class Fake:
    def states(self, *states):
      (tmp_path / "states").write_text("\n".join(states) + "\n")

    def running(self, *codes):
      (tmp_path / "running").write_text("\n".join(str(c) for c in codes) + "\n")

    def calls(self):
      return [json.loads(line) for line in log.read_text().splitlines()]

    def verbs(self):
      """The gcloud sub-commands called, without flags (auth checks dropped)."""
      return [" ".join(a for a in call if not a.startswith("--") and a not in ("mt",))
              for call in self.calls() if call[:2] != ["auth", "list"]]

  return Fake()


def test_accelerator_types_and_hosts():
  assert [tpu.num_hosts(t) for t in ("v4-8", "v4-32", "v5litepod-8", "v5litepod-16",
                                     "v3-8", "v5p-64", "v6e-32")] == [1, 4, 1, 4, 1, 8, 8]
  for bad in ("v4-7", "v9-8", "v4_8", "tpu"):
    with pytest.raises(tpu.LaunchError, match="--accelerator_type: unknown TPU type"):
      tpu.num_hosts(bad)


def test_single_host_run_sequence(fake_gcloud):
  for command in ("create", "setup", "run"):
    tpu.main([command, *BASE, "--accelerator_type=v4-8", "--provisioning=spot",
              "--workdir=/tmp/local_ok_for_one_host", "--data_dir=gs://b/tfds"]
             if command == "run" else [command, *BASE, "--accelerator_type=v4-8",
                                       "--provisioning=spot"])
  calls = fake_gcloud.calls()
  create = next(c for c in calls if "create" in c)
  assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "mt"]
  assert "--accelerator-type=v4-8" in create and "--spot" in create
  assert "--zone=us-central2-b" in create
  assert any(c[:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in c
             for c in calls)  # this checkout copied to every worker
  setup = next(c for c in calls if "ssh" in c and "jax[tpu]" in c[-1])
  assert "--worker=all" in setup and "jax.local_device_count()" in setup[-1]
  train = next(c for c in calls if "ssh" in c and "nohup" in c[-1])
  assert "--worker=all" in train
  assert "--config.data.data_dir=gs://b/tfds" in train[-1] and "--multihost" not in train[-1]
  assert "--worker=0" in calls[-1] and "tail" in calls[-1][-1]  # logs streamed from worker 0


def test_multi_host_run_needs_gs_workdir_and_initializes_jax_distributed(fake_gcloud):
  with pytest.raises(SystemExit, match="a 4-host run needs a gs:// workdir"):
    tpu.main(["run", *BASE, "--accelerator_type=v4-32", "--workdir=/tmp/local"])
  tpu.main(["run", *BASE, "--accelerator_type=v4-32", "--workdir=gs://b/runs/big",
            "--config=experiments/configs/wmt14_big.py", "--override=config.train.num_steps=10"])
  train = next(c for c in fake_gcloud.calls() if "ssh" in c and "nohup" in c[-1])
  assert "--worker=all" in train
  for flag in ("--multihost", "--workdir=gs://b/runs/big", "--config.train.num_steps=10",
               "--config=experiments/configs/wmt14_big.py"):
    assert flag in train[-1]


def test_logs_are_collected_from_every_worker(fake_gcloud, tmp_path):
  tpu.main(["logs", *BASE, "--accelerator_type=v4-32", f"--collect={tmp_path / 'logs'}"])
  scp = [c for c in fake_gcloud.calls() if "scp" in c]
  assert [c[-1] for c in scp] == [f"--worker={i}" for i in range(4)]


def test_watch_recreates_a_preempted_vm_and_resumes(fake_gcloud):
  fake_gcloud.states("READY", "PREEMPTED", "CREATING", "READY", "READY")
  fake_gcloud.running(0, 1)  # running at the first check, finished at the second
  tpu.main(["watch", *BASE, "--accelerator_type=v4-8", "--provisioning=spot",
            "--workdir=gs://b/run"])
  verbs = fake_gcloud.verbs()
  assert verbs[:2] == ["compute tpus tpu-vm describe", "compute tpus tpu-vm ssh"]
  restart = verbs.index("compute tpus tpu-vm delete")
  assert verbs[restart + 1] == "compute tpus tpu-vm create"
  train_calls = [c for c in fake_gcloud.calls() if "ssh" in c and "nohup" in c[-1]]
  assert len(train_calls) == 1 and "--workdir=gs://b/run" in train_calls[0][-1]
  assert verbs[-1] == "compute tpus tpu-vm ssh"  # the last pgrep: finished


def test_queued_resources(fake_gcloud):
  fake_gcloud.states("SUSPENDED", "PROVISIONING", "ACTIVE", "ACTIVE")
  fake_gcloud.running(1)
  tpu.main(["watch", *BASE, "--queued", "--accelerator_type=v5litepod-16",
            "--workdir=gs://b/run"])
  verbs = fake_gcloud.verbs()
  assert "compute tpus queued-resources delete" in verbs
  assert "compute tpus queued-resources create" in verbs


def test_dry_run_prints_commands_and_calls_nothing(fake_gcloud, capsys):
  tpu.main(["create", *BASE, "--accelerator_type=v4-8", "--dry_run"])
  assert capsys.readouterr().out.startswith("gcloud compute tpus tpu-vm create mt ")
  tpu.main(["sweep", *BASE, "--dry_run", "--num_vms=2", "--workdir=gs://b/sweep",
            "--sweep=experiments/sweeps/table3.py:tpu"])
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 19 and "mt-1" in printed[1] and "C_d1024" in "".join(printed)
  assert fake_gcloud.calls() == []


def test_bad_input_is_one_line(fake_gcloud, monkeypatch):
  with pytest.raises(SystemExit, match="--zone: 'uscentral' is not a zone"):
    tpu.main(["create", "--name=mt", "--zone=uscentral"])
  monkeypatch.setenv("FAKE_GCLOUD_NO_AUTH", "1")
  with pytest.raises(SystemExit, match="gcloud is not authenticated: run `gcloud auth login`"):
    tpu.main(["status", *BASE])
  monkeypatch.setenv("PATH", "/nonexistent")
  with pytest.raises(SystemExit, match="gcloud is not installed"):
    tpu.main(["status", *BASE])


def test_cli_entry_point(fake_gcloud):
  result = subprocess.run([sys.executable, "-m", "launch.tpu", "status", *BASE], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ))
  assert result.returncode == 0 and result.stdout.strip() == "READY"


def test_sweep_points_run_on_free_vms(fake_gcloud, tmp_path):
  from experiments import report, sweep
  vms = tpu.queue.Queue()
  for index in range(2):
    options = tpu.parse(["sweep", *BASE, f"--name=vm{index}", "--accelerator_type=v4-8"])
    vms.put(tpu.TpuVm(tpu.Gcloud(dry_run=False), options))
  fake_gcloud.running(0, 1, 1, 1)  # the first point is still running at the first check
  definition = {"name": "t", "config": "tests/tiny_config.py",
                "points": [{"name": "a", "overrides": {"model.d_ff": 32}},
                           {"name": "b", "overrides": {"model.d_ff": 64}}]}

  launch = tpu.sweep_launcher(vms, poll_seconds=0)

  def launch_and_fake_metrics(argv, log_path):
    code = launch(argv, log_path)
    workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
    (tmp_path / "root" / os.path.basename(workdir) / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "eval_perplexity": 9.0, "eval_bleu": 1.0}) + "\n")
    return code

  assert sorted(sweep.run_sweep(definition, str(tmp_path / "root"), parallel=2,
                                launcher=launch_and_fake_metrics)) == ["a", "b"]
  trains = [c for c in fake_gcloud.calls() if "ssh" in c and "nohup" in c[-1]]
  assert len(trains) == 2 and {c[4] for c in trains} <= {"vm0", "vm1"}
  assert any("--config.model.d_ff=32" in c[-1] for c in trains)
  assert "| a |" in open(report.write_report(str(tmp_path / "root"))).read()
