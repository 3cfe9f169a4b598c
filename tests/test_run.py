"""The training loop (`run.py`), mostly run as users run it: `python -m transformer.main` in a
subprocess: learning, kill and exact resume, SIGTERM, interrupted saves, NaN, one-line errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from tests.helpers import REPO, tiny_config
from transformer import checkpointing, run, steps


@pytest.mark.slow
def test_training_learns_and_killed_run_resumes_exactly(data_dir, tmp_path):
  reference = helpers.run_main(*helpers.dirs(tmp_path / "reference", data_dir),
                               "--config.train.num_steps=40")
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = helpers.logged_losses(tmp_path / "reference")
  assert sorted(expected) == list(range(1, 41))
  assert np.mean([expected[s] for s in range(36, 41)]) < 0.75 * expected[1]  # it learns
  assert "validation: eval_loss" in reference.stdout

  workdir = tmp_path / "killed"
  process = subprocess.Popen(helpers.main_command(*helpers.dirs(workdir, data_dir),
                                                  "--config.train.num_steps=40"),
                             cwd=REPO, env=helpers.subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  helpers.wait_for(lambda: os.path.isdir(workdir / "checkpoints" / "10")
                   and helpers.max_logged_step(workdir) >= 12)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert helpers.max_logged_step(workdir) < 40, "the run finished before it was killed"
  resumed = helpers.run_main(*helpers.dirs(workdir, data_dir), "--config.train.num_steps=40")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from the checkpoint at step" in resumed.stdout
  got = helpers.logged_losses(workdir)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-6)


def test_cooldown_run_logs_falling_rates_and_refuses_to_be_extended(data_dir, tmp_path):
  cooled = helpers.run_main(*helpers.dirs(tmp_path, data_dir), "--config.train.num_steps=10",
                    "--config.train.cooldown_steps=4")
  assert cooled.returncode == 0, cooled.stderr[-2000:]
  config = tiny_config(data_dir).train
  d_model = tiny_config(data_dir).model.d_model
  rates = {}
  for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "learning_rate" in record:
      rates[record["step"]] = record["learning_rate"]
  for step in range(1, 11):  # Sec. 5.3 times min(1, (11 - step) / 4), written out here
    paper = (config.learning_rate_factor * d_model**-0.5
             * min(step**-0.5, step * config.warmup_steps**-1.5))
    np.testing.assert_allclose(rates[step], paper * min(1.0, (11 - step) / 4), rtol=1e-5)
  extended = helpers.run_main(*helpers.dirs(tmp_path, data_dir), "--config.train.num_steps=14",
                      "--config.train.cooldown_steps=4")
  assert extended.returncode != 0 and "Traceback" not in extended.stderr
  assert len(extended.stderr.strip().splitlines()) == 1, extended.stderr
  assert "the checkpoint at step 10 was trained with train.num_steps=10" in extended.stderr


def test_sigterm_saves_and_exits_zero(data_dir, tmp_path):
  process = subprocess.Popen(helpers.main_command(*helpers.dirs(tmp_path, data_dir),
                                                  "--config.train.num_steps=100000"),
                             cwd=REPO, env=helpers.subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  helpers.wait_for(lambda: helpers.max_logged_step(tmp_path) >= 5)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=60)
  assert process.returncode == 0, output[-2000:]
  assert "stop signal (SIGTERM or SIGUSR1) received: saved a checkpoint at step" in output
  stopped_at = helpers.max_logged_step(tmp_path)
  assert stopped_at < 100000
  manager = checkpointing.make_manager(str(tmp_path / "checkpoints"), keep=5, save_every=10,
                                       best_metric="eval_loss", best_mode="min")
  assert manager.latest_step() == stopped_at


@pytest.fixture(scope="module")
def ten_steps(data_dir, tmp_path_factory):
  """The workdir of a 10-step run; tests that resume it work on a copy."""
  workdir = tmp_path_factory.mktemp("ten_steps")
  first = helpers.run_main(*helpers.dirs(workdir, data_dir), "--config.train.num_steps=10")
  assert first.returncode == 0, first.stderr[-2000:]
  return workdir


def test_interrupted_save_is_never_restored(data_dir, ten_steps, tmp_path):
  shutil.copytree(ten_steps, tmp_path, dirs_exist_ok=True)
  workdir = os.path.relpath(tmp_path, REPO)  # relative, as users type it: Orbax needs absolute
  checkpoints = tmp_path / "checkpoints"
  assert (checkpoints / "10").is_dir()
  # What a save killed half-way leaves behind: Orbax's temporary directory, never renamed.
  partial = checkpoints / "20.orbax-checkpoint-tmp-1234567890"
  partial.mkdir()
  (partial / "state").mkdir()
  resumed = helpers.run_main(*helpers.dirs(workdir, data_dir), "--config.train.num_steps=12")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from the checkpoint at step 10" in resumed.stdout


def test_nan_stops_and_keeps_only_checkpoints_with_finite_parameters(data_dir, tmp_path):
  # Parameters grow ~lr per step and the warm-up raises lr: finite for a few steps, then not.
  result = helpers.run_main(*helpers.dirs(tmp_path, data_dir),
                            "--config.train.learning_rate_factor=1e21",
                            "--config.train.checkpoint_every_steps=1",
                            "--config.train.num_steps=40")
  assert result.returncode != 0
  message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(message) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "became NaN or infinite by step" in message[0] or "loss became" in message[0]
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved, "the run diverged before its first checkpoint: the test checks nothing"
  manager = checkpointing.read_only_manager(str(tmp_path / "checkpoints"))
  config = tiny_config(data_dir)
  state, _ = checkpointing.restore(manager, saved[-1], steps.make_setup(config).abstract_state)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))
  assert f"last good checkpoint is step {saved[-1]}" in message[0]


def test_resuming_from_non_finite_parameters_is_a_one_line_error(data_dir, ten_steps, tmp_path):
  shutil.copytree(ten_steps, tmp_path, dirs_exist_ok=True)
  config = tiny_config(data_dir)
  manager = checkpointing.make_manager(str(tmp_path / "checkpoints"), keep=5, save_every=1,
                                       best_metric="eval_loss", best_mode="min")
  builder, tokenizer = run.prepare_inputs(config, str(tmp_path))
  setup = steps.make_setup(config, tokenizer.vocab_size)
  state, metadata = checkpointing.restore(manager, 10, setup.abstract_state)
  position = checkpointing.restore_position(manager, 10)
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                        text=True).stdout.strip()
  recorded = metadata["provenance"]  # every checkpoint says where it came from
  assert recorded["commit"] == head and recorded["dirty"] in (True, False)
  assert recorded["versions"]["jax"] == jax.__version__ and recorded["seed"] == config.seed
  assert recorded["device_kind"] == "cpu" and recorded["device_count"] == 1
  assert json.loads((tmp_path / "provenance.json").read_text())["commit"] == head
  state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  checkpointing.save(manager, 11, state, position, metadata, force=True)
  manager.wait_until_finished()
  result = helpers.run_main(*helpers.dirs(tmp_path, data_dir), "--config.train.num_steps=12")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "error: the checkpoint at step 11" in result.stderr
  assert "holds NaN or infinite parameters" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.train.nmu_steps=3", "error: --config.train.nmu_steps: no such config key; "
                                   "closest: config.train.num_steps"),
    ("--config.train.num_steps=abc", "error: flag --config.train.num_steps=abc: invalid literal"),
    ("--config.train.label_smoothing=1.5", "error: config.train.label_smoothing must be in [0, 1)"),
])
def test_bad_config_is_a_one_line_error(data_dir, tmp_path, override, message):
  """One trainer process per kind of mistake: config keys, flag values, field values (a missing
  config file and an unknown key of the default config: test_quiet_start). The other field
  checks raise the ValueError that the trainer prints the same way, checked
  in-process by test_bad_config_values_name_the_field."""
  result = helpers.run_main(*helpers.dirs(tmp_path, data_dir), override, "--mode=compile")
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
      result.stderr


def test_default_output_has_no_library_start_up_noise(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("TF_", "TPU_", "JAX_PLATFORMS", "XLA_FLAGS"))}
  result = subprocess.run([sys.executable, "-m", "transformer.main", "--mode=describe"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == "", result.stderr[-2000:]
  assert result.stdout.startswith("model: d_model=64")


@pytest.mark.parametrize("command", [[sys.executable, "-m", "transformer.main", "--help"],
                                     [os.path.join(os.path.dirname(sys.executable),
                                                   "transformer-main"), "-h"]],
                         ids=["module", "console_script"])
def test_help_lists_every_flag_and_the_config_overrides_and_exits_zero(command):
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
  assert "--config.train.num_steps=100" in result.stdout
  for flag, text in (("--mode", "compile: compile the train step"), ("--topology", "h200"),
                     ("--export.format", "ctranslate2"), ("--workdir", "Run directory")):
    assert flag in result.stdout and text in result.stdout, flag


def test_compile_mode_reports_memory_and_flops(data_dir, tmp_path):
  result = helpers.run_main(*helpers.dirs(tmp_path, data_dir), "--mode=compile", devices=8)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in result.stdout
  assert "XLA FLOPs per step (global)" in result.stdout and "memory per device" in result.stdout
  assert (tmp_path / "compile" / "host.json").exists()


def test_logged_speed_excludes_validation_time(data_dir, tmp_path, monkeypatch):
  """A fake clock that jumps 1,000 s during each validation pass: the intervals that follow
  one must not absorb it (steps/s, tokens/s and MFU count training steps only), and the
  validation records carry it, so the run's wall time can be summed across resumes."""
  clock = {"now": 0.0}

  def perf_counter():
    clock["now"] += 0.001
    return clock["now"]

  real_evaluate = run.evaluate

  def slow_evaluate(*args, **kwargs):
    clock["now"] += 1000.0
    return real_evaluate(*args, **kwargs)

  monkeypatch.setattr(run, "time", types.SimpleNamespace(perf_counter=perf_counter))
  monkeypatch.setattr(run, "evaluate", slow_evaluate)
  config = tiny_config(data_dir, num_steps=6, log_every_steps=2, eval_every_steps=2,
                       bleu_every_steps=0)
  run.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if "steps_per_sec" in r]
  validation = [r for r in records if "validation_seconds" in r]
  assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in validation] == [2, 4, 6]
  assert all(r["interval_seconds"] < 1.0 for r in train), train
  assert all(r["steps_per_sec"] > 1.0 for r in train)
  assert all(1000.0 <= r["validation_seconds"] < 1001.0 for r in validation)
