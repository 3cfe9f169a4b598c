"""The train step: the paper's schedule, cooldown, optimizer options, bfloat16, dropout PRNGs,
config checks."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import tiny_config as tiny_config_file
from tests.helpers import fixed_batches, losses_on_mesh, tiny_config
from transformer import steps, training


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


@pytest.fixture(scope="module")
def float32_threefry_run(data_dir):
  """Two steps of the tiny config on one device (float32, threefry dropout): (losses, state)."""
  return losses_on_mesh(tiny_config(data_dir, warmup_steps=2), (1, 1, 1), jax.devices()[:1],
                        fixed_batches(2))


def test_bfloat16_training_step_is_finite_and_close(data_dir, float32_threefry_run):
  config = tiny_config(data_dir, warmup_steps=2)
  full, _ = float32_threefry_run
  config.model.dtype = "bfloat16"
  half, state = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], fixed_batches(2))
  assert np.all(np.isfinite(half))
  np.testing.assert_allclose(half, full, rtol=3e-2)
  assert jax.tree.leaves(state.params)[0].dtype == jnp.float32  # parameters stay float32


def test_rbg_dropout_prng_trains_from_the_same_initial_parameters(data_dir,
                                                                float32_threefry_run):
  config = tiny_config(data_dir, warmup_steps=2)
  threefry, threefry_state = float32_threefry_run
  config.train.prng_impl = "rbg"
  rbg, rbg_state = losses_on_mesh(config, (1, 1, 1), jax.devices()[:1], fixed_batches(2))
  assert rbg_state.rng.shape == (4,) and threefry_state.rng.shape == (2,)
  assert np.all(np.isfinite(rbg))
  # Same parameters at step 0 (close first losses), different dropout masks (not equal).
  np.testing.assert_allclose(rbg[0], threefry[0], rtol=0.05)
  assert rbg[0] != threefry[0]
  config.train.prng_impl = "philox"
  with pytest.raises(ValueError, match="config.train.prng_impl must be one of threefry2x32, rbg"):
    steps.validate(config)


@pytest.mark.parametrize("section, field, value, message", [
    ("model", "dropout_rate", -0.1, "ModelConfig.dropout_rate must be in [0, 1)"),
    ("mesh", "data", 3, "config.mesh: data*fsdp*tensor = 3*1*1 does not match"),
    ("train", "cooldown_steps", -1, "config.train.cooldown_steps must be in [0, "),
    ("train", "bleu_max_examples", 0, "config.train.bleu_max_examples must be positive, got 0"),
    ("data", "read_threads", -2, "config.data.read_threads must be -1 (auto) or 0 or more, got -2"),
])
def test_bad_config_values_name_the_field(data_dir, section, field, value, message):
  config = tiny_config(data_dir)
  config[section][field] = value
  with pytest.raises(ValueError) as raised:
    steps.make_setup(config)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
