"""`launch/slurm.py` against a real single-node SLURM (slurm-wlm + munge, `.ci/slurm_up.sh`).

A 2-task job trains the tiny config in two processes joined by `jax.distributed` from SLURM's
environment and, warned of its time limit (SIGUSR1 to the batch shell, as `--signal=B:USR1@N`
does), checkpoints, requeues itself and resumes from the checkpoint; a 2-point sweep runs as a
job array and lands in `results.jsonl`.
"""

import json
import os
import subprocess
import time

import pytest

from launch import slurm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def slurm_conf():
  started = subprocess.run(["bash", os.path.join(REPO, ".ci", "slurm_up.sh")],
                           capture_output=True, text=True, timeout=180)
  assert started.returncode == 0, f"SLURM did not start: {started.stderr}"
  return started.stdout.strip().splitlines()[-1]


@pytest.fixture
def env(slurm_conf, monkeypatch):
  monkeypatch.setenv("SLURM_CONF", slurm_conf)
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device per trainer process


def job_state(job_id: str) -> dict[str, str]:
  """JobState, ExitCode, Restarts... of a job slurmctld still remembers."""
  shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True).stdout
  return dict(field.split("=", 1) for field in shown.split() if "=" in field)


def poll(condition, timeout: float, what: str, job_id: str) -> None:
  """Checks `condition()` every second until it holds; cancels the job and fails after
  `timeout` seconds (a guard against a hung job, not a speed check)."""
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      subprocess.run(["scancel", job_id])
      raise AssertionError(f"job {job_id}: {what} within {timeout}s")
    time.sleep(1)


def wait_for(job_id: str, timeout: float = 420) -> dict[str, str]:
  """Waits until the job (every array task) has ended; returns the last task's state."""
  def ended() -> bool:
    queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    return queued.returncode == 0 and not queued.stdout.strip()

  poll(ended, timeout, "did not end", job_id)
  return job_state(job_id)


def test_sweep_array_lands_in_results(env, tmp_path):
  spec = f"tests/slurm_sweep.py:{tmp_path}/tfds"
  path, text, points = slurm.sweep_job(spec, str(tmp_path / "root"), slurm.Resources())
  assert points == ["drop0", "drop1"] and "#SBATCH --array=0-1" in text
  wait_for(slurm.submit(path))
  rows = [json.loads(line) for line in (tmp_path / "root" / "results.jsonl").read_text()
          .splitlines()]
  assert sorted(row["point"] for row in rows) == ["drop0", "drop1"]
  assert {row["steps"] for row in rows} == {6}
  with pytest.raises(slurm.SlurmError, match="every selected point is finished"):
    slurm.sweep_job(spec, str(tmp_path / "root"), slurm.Resources())


@pytest.mark.slow
def test_two_task_job_checkpoints_requeues_and_resumes_at_the_time_limit_warning(env, tmp_path):
  """Two trainer processes joined by jax.distributed; the warning SLURM sends before the time
  limit (SIGUSR1 to the batch shell) makes both save the same step, the job requeue itself and
  resume from that step."""
  resources = slurm.Resources(processes_per_node=2)
  path, text = slurm.run_job("tests/tiny_config.py", str(tmp_path), resources,
                             ["train.num_steps=150", "train.log_every_steps=10",
                              "train.checkpoint_every_steps=100000",
                              "train.eval_every_steps=100000", "train.test_at_end=false",
                              f"data.data_dir={tmp_path}/tfds"])
  assert "#SBATCH --ntasks-per-node=2" in text and "--multihost" in text
  job_id = slurm.submit(path)
  log_path = tmp_path / "slurm" / f"{job_id}.out"
  poll(lambda: log_path.exists() and "step 10/150" in log_path.read_text(), 240,
       "training did not start", job_id)
  subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
  state = wait_for(job_id, timeout=600)
  log = log_path.read_text()
  assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-3000:]
  assert state["Restarts"] == "1", log[-3000:]
  assert json.loads((tmp_path / "provenance.json").read_text())["process_count"] == 2
  assert "time limit near: checkpointing, then requeueing" in log
  saved = [line for line in log.splitlines() if "received: saved a checkpoint at step" in line]
  assert len(saved) == 1
  saved_step = int(saved[0].split("at step ")[1].split(",")[0])
  assert 10 <= saved_step < 150
  assert f"resumed from the checkpoint at step {saved_step}" in log
  assert "restart 1" in log and (tmp_path / "checkpoints" / "150").is_dir()


def test_bad_input_is_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit, match=r"error: --processes_per_node must be 1 .* or "
                                       r"--gpus_per_node=8 \(one per GPU\), got 3"):
    slurm.main(["run", "--config=tests/tiny_config.py", f"--workdir={tmp_path}",
                "--gpus_per_node=8", "--processes_per_node=3", "--dry_run"])
  with pytest.raises(SystemExit, match=r"error: --override: expected KEY=VALUE"):
    slurm.main(["run", "--config=tests/tiny_config.py", f"--workdir={tmp_path}",
                "--override=oops", "--dry_run"])
  with pytest.raises(SystemExit, match=r"error: no-such-sbatch: not found"):
    slurm.main(["run", "--config=tests/tiny_config.py", f"--workdir={tmp_path}",
                "--sbatch=no-such-sbatch"])
  with pytest.raises(SystemExit) as exit_info:
    slurm.main(["--help"])
  assert exit_info.value.code == 0 and "sweep" in capsys.readouterr().out
