"""Several processes as one run (local processes on 127.0.0.1): they train like one, score BLEU
over every process's sentences, fail fast when one is missing, and on SIGTERM to one host all
stop at the same step and resume exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import sacrebleu

from tests import helpers
from tests.helpers import REPO, fixed_batches, losses_on_mesh, tiny_config
from transformer import checkpointing, workdir as workdir_lib


@pytest.mark.slow
def test_two_processes_train_like_one(data_dir):
  port = 20000 + os.getpid() % 20000
  worker = os.path.join(REPO, "tests", "multihost_worker.py")
  processes = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port)], cwd=REPO,
                                env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert [r["devices"] for r in results] == [4, 4]
  config = tiny_config(data_dir, warmup_steps=2)
  reference, _ = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], fixed_batches(3))
  # Corpus BLEU and chrF over both processes' sentences, as one process scores the whole set.
  bleu = sacrebleu.corpus_bleu(helpers.SCORED_PAIRS[0], [helpers.SCORED_PAIRS[1]]).score
  chrf = sacrebleu.corpus_chrf(helpers.SCORED_PAIRS[0], [helpers.SCORED_PAIRS[1]]).score
  for result in results:
    np.testing.assert_allclose(result["losses"], reference, rtol=2e-5)
    assert (result["bleu"], result["chrf"]) == pytest.approx((bleu, chrf), abs=1e-9)


def test_missing_process_fails_fast(tmp_path):
  port = 40000 + os.getpid() % 20000
  worker = os.path.join(REPO, "tests", "multihost_worker.py")
  result = subprocess.run([sys.executable, worker, "0", "2", str(port), "5"], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0
  assert "could not join 2 processes at 127.0.0.1" in result.stderr


def start(workdir, data_dir, port, num_steps, eval_every=10, bleu_every=0):
  """The two processes of one run (2 CPU devices each), as `--coordinator_address` users run."""
  env = helpers.subprocess_env(devices=2)
  return [subprocess.Popen(
      helpers.main_command(
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every_steps=1000",
          "--config.train.test_at_end=false", f"--config.train.eval_every_steps={eval_every}",
          f"--config.train.bleu_every_steps={bleu_every}",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
          "--initialization_timeout=60"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def finish(processes):
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  return outputs


def preempt_one_host(workdir, data_dir, port, eval_every=10, bleu_every=0) -> int:
  """A two-process run whose second process gets SIGTERM after step 4: both save the same step
  (one checkpoint, with the input position) and exit 0. Returns that step."""
  processes = start(workdir, data_dir, port, 100_000, eval_every, bleu_every)
  deadline = time.time() + 240
  while time.time() < deadline:
    if helpers.max_logged_step(workdir) >= 4:
      break
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)  # one host only: the other learns it from the gather
  outputs = finish(processes)
  saved = [int(line.rsplit("step ", 1)[1].split(",")[0]) for output in outputs
           for line in output.splitlines()
           if "stop signal (SIGTERM or SIGUSR1) received: saved a checkpoint" in line]
  assert len(saved) == 1  # printed by process 0 only, for the step every process saved
  manager = checkpointing.read_only_manager(str(workdir / "checkpoints"))
  assert manager.all_steps() == [saved[0]] and 4 <= saved[0] < 20
  assert os.path.isdir(workdir / "checkpoints" / str(saved[0]) / "data_iterator")
  return saved[0]


def test_sigterm_on_one_host_stops_both_at_the_same_step(tmp_path):
  """The fast half of the next test, with a validation pass (BLEU over both processes' rows)
  before the signal; only process 0 writes the metrics and the provenance."""
  port = 23000 + os.getpid() % 9000
  workdir = tmp_path / "preempted"
  saved = preempt_one_host(workdir, tmp_path / "tfds", port, eval_every=3, bleu_every=3)
  records = workdir_lib.read_metrics(str(workdir))
  validation = [r for r in records if "eval_bleu" in r]
  assert [r["step"] for r in validation] == [3] and 0 <= validation[0]["eval_bleu"] <= 100
  logged = [r["step"] for r in records if "loss" in r]
  assert logged == sorted(set(logged)) and logged[-1] == saved  # one writer, every step once
  assert json.loads((workdir / "provenance.json").read_text())["process_count"] == 2


@pytest.mark.slow
def test_sigterm_on_one_host_stops_both_at_the_same_step_and_resumes_exactly(tmp_path):
  port = 21000 + os.getpid() % 9000
  data_dir = tmp_path / "tfds"
  finish(start(tmp_path / "reference", data_dir, port, 20))
  expected = helpers.logged_losses(tmp_path / "reference")
  workdir = tmp_path / "preempted"
  preempt_one_host(workdir, data_dir, port + 1)
  finish(start(workdir, data_dir, port + 2, 20))
  got = helpers.logged_losses(workdir)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-6)
