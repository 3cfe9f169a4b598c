"""Schedule, loss, sharding equivalence, learning, checkpoints and the loop's failure modes."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer import checkpointing, flops, losses, run, sharding, steps, training

import tiny_config as tiny_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paper_learning_rate_matches_the_formula():
  schedule = training.paper_learning_rate(d_model=512, warmup_steps=4000)
  for count in [0, 1, 100, 3998, 3999, 4000, 10_000, 99_999]:
    step = count + 1
    expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
    np.testing.assert_allclose(float(schedule(count)), expected, rtol=1e-5)
  doubled = training.paper_learning_rate(512, 4000, factor=2.0)
  np.testing.assert_allclose(float(doubled(10)), 2 * float(schedule(10)), rtol=1e-6)


def test_cooldown_scales_the_last_steps_linearly_to_zero():
  constant = training.with_cooldown(optax.constant_schedule(2.0), num_steps=10, cooldown_steps=4)
  rates = [float(constant(count)) for count in range(10)]  # steps 1..10
  np.testing.assert_allclose(rates, [2.0] * 6 + [2.0 * k / 4 for k in (4, 3, 2, 1)], rtol=1e-6)
  paper = training.paper_learning_rate(64, 5)
  assert training.with_cooldown(paper, 10, 0) is paper
  cooled = training.with_cooldown(paper, 10, 10)
  np.testing.assert_allclose([float(cooled(c)) for c in range(10)],
                             [float(paper(c)) * (10 - c) / 10 for c in range(10)], rtol=1e-6)


@pytest.mark.parametrize("saved, current, step, conflict", [
    ((100, 0), (200, 0), 100, False),  # extending the paper's schedule
    ((6000, 0), (6000, 1000), 5001, False),  # branching into a cooldown that starts after step
    ((6000, 0), (6000, 1000), 5002, True),  # ... or that would have lowered step 5002's rate
    ((6000, 1000), (6000, 1000), 5500, False),  # resuming the same cooldown
    ((6000, 1000), (8000, 1000), 6000, True),  # extending a cooled-down run
    ((6000, 1000), (8000, 1000), 5001, False),  # step 5001 still had the full rate in both
])
def test_cooldown_conflict(saved, current, step, conflict):
  message = training.cooldown_conflict(saved, current, step)
  assert bool(message) == conflict
  if conflict:
    assert f"at step {step}" in message and "train a new workdir" in message


def test_optimizer_options():
  config = tiny_config_file.get_config().train
  config.update(dict(grad_accum_steps=3, grad_clip_norm=1.0, weight_decay=0.01))
  optimizer = training.make_optimizer(config, training.paper_learning_rate(32, 10))
  params = {"w": jnp.ones(3)}
  state = optimizer.init(params)
  grads = {"w": jnp.full(3, 100.0)}
  changes = []
  for _ in range(6):
    updates, state = optimizer.update(grads, state, params)
    changes.append(float(jnp.abs(updates["w"]).sum()))
  # Updates only every third call (gradient accumulation); clipping bounds their size.
  assert [c > 0 for c in changes] == [False, False, True, False, False, True]


def test_label_smoothed_cross_entropy_matches_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 7).astype(np.float32)
  targets = rng.randint(0, 7, (2, 3))
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  smoothing = 0.1
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  soft = np.full((2, 3, 7), smoothing / 6)
  for b in range(2):
    for t in range(3):
      soft[b, t, targets[b, t]] = 1 - smoothing
  entropy = -(soft * np.log(soft)).sum(-1)
  expected = ((-(soft * log_probs).sum(-1) - entropy) * weights).sum()
  loss_sum, weight_sum = losses.label_smoothed_cross_entropy(logits, targets, weights, smoothing)
  np.testing.assert_allclose(loss_sum, expected, rtol=1e-5)
  assert float(weight_sum) == 3.0
  nll, _ = losses.cross_entropy(logits, targets, weights)
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, -(picked * weights).sum(), rtol=1e-5)
  correct, _ = losses.accuracy(logits, targets, weights)
  assert float(correct) == ((logits.argmax(-1) == targets) * weights).sum()


def tiny_config(data_dir, **train):
  config = tiny_config_file.get_config()
  config.data.data_dir = str(data_dir)
  config.train.update(train)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def fixed_batches(count, rows=16, length=32, seed=0):
  rng = np.random.RandomState(seed)
  batches = []
  for _ in range(count):
    batch = {k: np.array(v) for k, v in training.dummy_batch(rows, length).items()}
    for feature in ("inputs", "targets"):
      lengths = rng.randint(4, length, rows)
      for row, n in enumerate(lengths):
        batch[feature][row, :n] = rng.randint(3, 128, n)
        batch[f"{feature}_segmentation"][row, :n] = 1
        batch[f"{feature}_position"][row, :n] = np.arange(n)
    batches.append(batch)
  return batches


def losses_on_mesh(config, mesh_shape, devices, batches):
  """Per-step training losses on `batches` with the given mesh."""
  config = config.copy_and_resolve_references()
  config.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
  setup = steps.make_setup(config, devices=devices)
  state = steps.initial_state(setup)
  step = steps.compiled_train_step(setup, config)
  result = []
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, setup.mesh))
    result.append(float(metrics["loss_sum"]) / float(metrics["weight"]))
  return result, state


def test_sharding_is_only_a_layout(data_dir):
  config = tiny_config(data_dir, warmup_steps=2)
  batches = fixed_batches(3)
  reference, _ = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], batches)
  assert reference[-1] < reference[0]
  for mesh_shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]:
    got, state = losses_on_mesh(config, mesh_shape, jax.devices(), batches)
    np.testing.assert_allclose(got, reference, rtol=2e-5, err_msg=str(mesh_shape))
  # FSDP and tensor parallelism really split the parameters.
  query = state.params["encoder"]["layers"]["layer_0"]["self_attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def test_bfloat16_training_step_is_finite_and_close(data_dir):
  config = tiny_config(data_dir, warmup_steps=2)
  batches = fixed_batches(2)
  full, _ = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], batches)
  config.model.dtype = "bfloat16"
  half, state = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], batches)
  assert np.all(np.isfinite(half))
  np.testing.assert_allclose(half, full, rtol=3e-2)
  assert jax.tree.leaves(state.params)[0].dtype == jnp.float32  # parameters stay float32


def test_rbg_dropout_prng_trains_from_the_same_initial_parameters(data_dir):
  config = tiny_config(data_dir, warmup_steps=2)
  batches = fixed_batches(2)
  threefry, threefry_state = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], batches)
  config.train.prng_impl = "rbg"
  rbg, rbg_state = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], batches)
  assert rbg_state.rng.shape == (4,) and threefry_state.rng.shape == (2,)
  assert np.all(np.isfinite(rbg))
  # Same parameters at step 0 (close first losses), different dropout masks (not equal).
  np.testing.assert_allclose(rbg[0], threefry[0], rtol=0.05)
  assert rbg[0] != threefry[0]
  config.train.prng_impl = "philox"
  with pytest.raises(ValueError, match="config.train.prng_impl must be one of threefry2x32, rbg"):
    steps.validate(config)


def test_a_cpu_peak_measured_under_load_is_measured_again(monkeypatch):
  measurements = iter([3e9])
  monkeypatch.setattr(flops, "measured_cpu_peak_flops", lambda: next(measurements))
  # The step ran faster than the start-up peak: that peak was measured under load.
  assert flops.corrected_peak(1e9, 2e9, configured=0.0) == 3e9
  assert flops.corrected_peak(1e9, 0.5e9, configured=0.0) == 1e9  # plausible: kept
  assert flops.corrected_peak(1e9, 2e9, configured=1e9) == 1e9  # the user's number stands
  measurements = iter([0.8e9])  # a second measurement that is lower still is not taken
  assert flops.corrected_peak(1e9, 2e9, configured=0.0) == 1e9


def test_mesh_errors():
  with pytest.raises(ValueError,
                     match=r"config.mesh: 8 devices cannot be split into data=-1 fsdp=3"):
    sharding.make_mesh(-1, 3, 1)
  with pytest.raises(ValueError, match=r"does not match the 8 available devices"):
    sharding.make_mesh(2, 2, 1)
  with pytest.raises(ValueError, match=r"config.mesh.tensor must be a positive size or -1"):
    sharding.make_mesh(-1, 1, 0)


def test_restore_onto_a_different_mesh(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.mesh.update(dict(data=8, fsdp=1, tensor=1))
  saved_setup = steps.make_setup(config)
  state = steps.initial_state(saved_setup)
  manager = checkpointing.make_manager(str(tmp_path), keep=2, save_every=1,
                                       best_metric="eval_loss", best_mode="min")
  position = {"process_count": 1, "workers": 0, "grain": {"next_index": 7}}
  checkpointing.save(manager, 1, state, position, {"note": "x"}, force=True)
  manager.wait_until_finished()
  config.mesh.update(dict(data=2, fsdp=4, tensor=1))
  restored_setup = steps.make_setup(config)
  restored, metadata = checkpointing.restore(manager, 1, restored_setup.abstract_state)
  assert metadata == {"note": "x"}
  assert checkpointing.restore_position(manager, 1) == position
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               state, restored)
  kernel = restored.params["decoder"]["layers"]["layer_0"]["feed_forward"]["wi"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


# The loop, run as users run it: `python -m transformer.main` in a subprocess.

def main_command(workdir, data_dir, *overrides):
  return [sys.executable, "-m", "transformer.main", "--config=tests/tiny_config.py",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *overrides]


def subprocess_env(devices=1):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  return env


def run_main(workdir, data_dir, *overrides, devices=1):
  return subprocess.run(main_command(workdir, data_dir, *overrides), cwd=REPO,
                        env=subprocess_env(devices), capture_output=True, text=True, timeout=300)


def logged_losses(workdir):
  """step -> training loss, the last record winning (a resumed run repeats steps)."""
  result = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as handle:
    for line in handle:
      record = json.loads(line)
      if "loss" in record:
        result[record["step"]] = record["loss"]
  return result


def wait_for(predicate, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    time.sleep(0.02)
  raise TimeoutError("condition not reached")


def max_logged_step(workdir):
  try:
    return max(logged_losses(workdir), default=0)
  except (FileNotFoundError, json.JSONDecodeError):
    return 0


def test_training_learns_and_killed_run_resumes_exactly(data_dir, tmp_path):
  reference = run_main(tmp_path / "reference", data_dir, "--config.train.num_steps=40")
  assert reference.returncode == 0, reference.stderr[-2000:]
  expected = logged_losses(tmp_path / "reference")
  assert sorted(expected) == list(range(1, 41))
  assert np.mean([expected[s] for s in range(36, 41)]) < 0.75 * expected[1]  # it learns
  assert "validation: eval_loss" in reference.stdout

  workdir = tmp_path / "killed"
  process = subprocess.Popen(main_command(workdir, data_dir, "--config.train.num_steps=40"),
                             cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  wait_for(lambda: os.path.isdir(workdir / "checkpoints" / "10") and max_logged_step(workdir) >= 12)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert max_logged_step(workdir) < 40, "the run finished before it was killed"
  resumed = run_main(workdir, data_dir, "--config.train.num_steps=40")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from the checkpoint at step" in resumed.stdout
  got = logged_losses(workdir)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-6)


def test_cooldown_run_logs_falling_rates_and_refuses_to_be_extended(data_dir, tmp_path):
  cooled = run_main(tmp_path, data_dir, "--config.train.num_steps=10",
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
  extended = run_main(tmp_path, data_dir, "--config.train.num_steps=14",
                      "--config.train.cooldown_steps=4")
  assert extended.returncode != 0 and "Traceback" not in extended.stderr
  assert len(extended.stderr.strip().splitlines()) == 1, extended.stderr
  assert "the checkpoint at step 10 was trained with train.num_steps=10" in extended.stderr


def test_sigterm_saves_and_exits_zero(data_dir, tmp_path):
  process = subprocess.Popen(main_command(tmp_path, data_dir, "--config.train.num_steps=100000"),
                             cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  wait_for(lambda: max_logged_step(tmp_path) >= 5)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=60)
  assert process.returncode == 0, output[-2000:]
  assert "stop signal (SIGTERM or SIGUSR1) received: saved a checkpoint at step" in output
  stopped_at = max_logged_step(tmp_path)
  assert stopped_at < 100000
  manager = checkpointing.make_manager(str(tmp_path / "checkpoints"), keep=5, save_every=10,
                                       best_metric="eval_loss", best_mode="min")
  assert manager.latest_step() == stopped_at


def test_interrupted_save_is_never_restored(data_dir, tmp_path):
  workdir = os.path.relpath(tmp_path, REPO)  # relative, as users type it: Orbax needs absolute
  first = run_main(workdir, data_dir, "--config.train.num_steps=10")
  assert first.returncode == 0, first.stderr[-2000:]
  checkpoints = tmp_path / "checkpoints"
  assert (checkpoints / "10").is_dir()
  # What a save killed half-way leaves behind: Orbax's temporary directory, never renamed.
  partial = checkpoints / "20.orbax-checkpoint-tmp-1234567890"
  partial.mkdir()
  (partial / "state").mkdir()
  resumed = run_main(workdir, data_dir, "--config.train.num_steps=12")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from the checkpoint at step 10" in resumed.stdout


def test_nan_stops_and_keeps_only_checkpoints_with_finite_parameters(data_dir, tmp_path):
  # Parameters grow ~lr per step and the warm-up raises lr: finite for a few steps, then not.
  result = run_main(tmp_path, data_dir, "--config.train.learning_rate_factor=1e21",
                    "--config.train.checkpoint_every_steps=1", "--config.train.num_steps=40")
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


def test_resuming_from_non_finite_parameters_is_a_one_line_error(data_dir, tmp_path):
  first = run_main(tmp_path, data_dir, "--config.train.num_steps=10")
  assert first.returncode == 0, first.stderr[-2000:]
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
  result = run_main(tmp_path, data_dir, "--config.train.num_steps=12")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "error: the checkpoint at step 11" in result.stderr
  assert "holds NaN or infinite parameters" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.train.nmu_steps=3", "error: --config.train.nmu_steps: no such config key; "
                                   "closest: config.train.num_steps"),
    ("--config.nonexistent=1", "error: --config.nonexistent: no such config key"),
    ("--config=experiments/configs/missing.py", "error: --config: no config file "
                                                "experiments/configs/missing.py"),
    ("--config.train.num_steps=abc", "error: flag --config.train.num_steps=abc: invalid literal"),
    ("--config.train.label_smoothing=1.5", "error: config.train.label_smoothing must be in [0, 1)"),
])
def test_bad_config_is_a_one_line_error(data_dir, tmp_path, override, message):
  """One trainer process per kind of mistake: config keys, files, flag values, field values.
  The other field checks raise the ValueError that the trainer prints the same way, checked
  in-process by test_bad_config_values_name_the_field."""
  result = run_main(tmp_path, data_dir, override, "--mode=compile")
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
      result.stderr


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "dropout_rate", -0.1, "ModelConfig.dropout_rate must be in [0, 1)"),
    ("mesh", "data", 3, "config.mesh: data*fsdp*tensor = 3*1*1 does not match"),
    ("train", "cooldown_steps", -1, "config.train.cooldown_steps must be in [0, "),
    ("train", "bleu_max_examples", 0, "config.train.bleu_max_examples must be positive, got 0"),
])
def test_bad_config_values_name_the_field(data_dir, section, field, value, message):
  config = tiny_config(data_dir)
  config[section][field] = value
  with pytest.raises(ValueError) as raised:
    steps.make_setup(config)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_default_output_has_no_library_start_up_noise(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("TF_", "TPU_", "JAX_PLATFORMS", "XLA_FLAGS"))}
  result = subprocess.run([sys.executable, "-m", "transformer.main", "--mode=describe"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == "", result.stderr[-2000:]
  assert result.stdout.startswith("model: d_model=64")


def test_compile_mode_reports_memory_and_flops(data_dir, tmp_path):
  result = run_main(tmp_path, data_dir, "--mode=compile", devices=8)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1}" in result.stdout
  assert "XLA FLOPs per step (global)" in result.stdout and "memory per device" in result.stdout
  assert (tmp_path / "compile" / "host.json").exists()


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
  for result in results:
    np.testing.assert_allclose(result["losses"], reference, rtol=2e-5)


def test_missing_process_fails_fast(tmp_path):
  port = 40000 + os.getpid() % 20000
  worker = os.path.join(REPO, "tests", "multihost_worker.py")
  result = subprocess.run([sys.executable, worker, "0", "2", str(port), "5"], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0
  assert "could not join 2 processes at 127.0.0.1" in result.stderr


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
