"""Preemption of a two-process run: SIGTERM reaches one host only, both stop at the same step."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from transformer import checkpointing

from test_training import logged_losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(workdir, data_dir, port, num_steps):
  """The two processes of one run (2 CPU devices each), as `--coordinator_address` users run."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  return [subprocess.Popen(
      [sys.executable, "-m", "transformer.main", "--config=tests/tiny_config.py",
       f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
       f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every_steps=1000",
       "--config.train.test_at_end=false", "--config.train.eval_every_steps=10",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       "--initialization_timeout=60"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def finish(processes):
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  return outputs


def test_sigterm_on_one_host_stops_both_at_the_same_step_and_resumes_exactly(tmp_path):
  port = 21000 + os.getpid() % 9000
  data_dir = tmp_path / "tfds"
  finish(start(tmp_path / "reference", data_dir, port, 20))
  expected = logged_losses(tmp_path / "reference")

  workdir = tmp_path / "preempted"
  processes = start(workdir, data_dir, port + 1, 100_000)
  deadline = time.time() + 240
  while time.time() < deadline:
    if os.path.exists(workdir / "metrics.jsonl") and max(logged_losses(workdir), default=0) >= 4:
      break
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)  # one host only: the other learns it from the gather
  outputs = finish(processes)
  saved = [int(line.rsplit("step ", 1)[1].split(",")[0]) for output in outputs
           for line in output.splitlines()
           if "stop signal (SIGTERM or SIGUSR1) received: saved a checkpoint" in line]
  assert len(saved) == 1  # printed by process 0 only, for the step every process saved
  manager = checkpointing.read_only_manager(str(workdir / "checkpoints"))
  assert manager.all_steps() == [saved[0]] and saved[0] < 20
  assert os.path.isdir(workdir / "checkpoints" / str(saved[0]) / "data_iterator")

  finish(start(workdir, data_dir, port + 2, 20))
  got = logged_losses(workdir)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-6)
