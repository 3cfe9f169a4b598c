"""The train step's memory options: chunked cross-entropy, bfloat16 logits, attention
probabilities stored in the compute dtype, and dropout masks drawn per shard."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import attention, losses, sharding, steps, training
from transformer.config import ModelConfig
from transformer.model import Transformer

import tiny_config as tiny_config_file


def reference_sums(logits, targets, weights, smoothing):
  """Smoothed loss sum and correct count, from the definition, in float64 NumPy."""
  logits = np.asarray(logits, np.float64)
  vocab = logits.shape[-1]
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                                  keepdims=True))
  log_probs -= logits.max(-1, keepdims=True)
  soft = np.full(logits.shape, smoothing / (vocab - 1))
  np.put_along_axis(soft, targets[..., None], 1 - smoothing, -1)
  entropy = -(soft * np.log(soft)).sum(-1)
  loss = ((-(soft * log_probs).sum(-1) - entropy) * weights).sum()
  correct = ((logits.argmax(-1) == targets) * weights).sum()
  return loss, correct


def projection_problem(seed=0, rows=3, length=8, width=16, vocab=50):
  rng = np.random.RandomState(seed)
  features = jnp.asarray(rng.randn(rows, length, width), jnp.float32)
  table = jnp.asarray(rng.randn(vocab, width) * 0.5, jnp.float32)
  targets = jnp.asarray(rng.randint(0, vocab, (rows, length)))
  weights = jnp.asarray(rng.rand(rows, length) > 0.3, jnp.float32)
  return features, table, targets, weights


@pytest.mark.parametrize("chunks", [1, 2, 8])
def test_chunked_loss_equals_the_definition_and_the_whole_loss(chunks):
  features, table, targets, weights = projection_problem()

  def sums(features, table, chunks):
    project = lambda x: jnp.einsum("bld,nd->bln", x, table)
    return losses.loss_and_accuracy(features, targets, weights, project, 0.1, chunks)

  loss_sum, correct, weight_sum = sums(features, table, chunks)
  expected_loss, expected_correct = reference_sums(
      np.einsum("bld,nd->bln", features, table), np.asarray(targets), np.asarray(weights), 0.1)
  np.testing.assert_allclose(loss_sum, expected_loss, rtol=1e-5)
  assert float(correct) == expected_correct
  assert float(weight_sum) == float(np.asarray(weights).sum())
  # Gradients (features and the projection matrix) equal the unchunked loss's.
  grad = jax.grad(lambda f, t, c: sums(f, t, c)[0], argnums=(0, 1))
  for got, want in zip(grad(features, table, chunks), grad(features, table, 1)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def definition_loss(logits, targets, weights, smoothing):
  """Smoothed cross entropy from its definition, through autodiff's log-softmax (a reference
  for the fused loss's value and its hand-written gradient)."""
  vocab = logits.shape[-1]
  soft = jnp.where(jnp.arange(vocab) == targets[..., None], 1 - smoothing,
                   smoothing / (vocab - 1))
  entropy = -jnp.sum(soft * jnp.log(soft), -1)
  cross = -jnp.sum(soft * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1)
  return jnp.sum((cross - entropy) * weights)


def test_fused_loss_gradient_is_softmax_minus_smoothed_targets():
  rng = np.random.RandomState(3)
  logits = jnp.asarray(rng.randn(3, 5, 41) * 4, jnp.float32)
  targets = jnp.asarray(rng.randint(0, 41, (3, 5)))
  weights = jnp.asarray(rng.rand(3, 5) > 0.3, jnp.float32)
  fused = lambda x: losses.label_smoothed_cross_entropy(x, targets, weights, 0.1)[0]
  reference = lambda x: definition_loss(x, targets, weights, 0.1)
  np.testing.assert_allclose(fused(logits), reference(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(fused)(logits), jax.grad(reference)(logits), atol=1e-6)
  # bfloat16 logits: the gradient comes back in bfloat16, within its rounding (2^-8 relative).
  narrow = logits.astype(jnp.bfloat16)
  gradient = jax.grad(fused)(narrow)
  assert gradient.dtype == jnp.bfloat16
  np.testing.assert_allclose(gradient.astype(jnp.float32),
                             jax.grad(reference)(narrow.astype(jnp.float32)), atol=4e-3)


def test_fused_loss_keeps_no_float32_copy_of_bfloat16_logits():
  """Autodiff through log-softmax keeps `[B, L, N]` float32 log-probabilities for the backward
  pass; the fused loss keeps only the bfloat16 logits (and per-position statistics)."""
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(4, 16, 96), jnp.bfloat16)
  targets = jnp.asarray(rng.randint(0, 96, (4, 16)))
  weights = jnp.ones((4, 16), jnp.float32)

  def kept(loss):
    _, backward = jax.vjp(lambda x: loss(x, targets, weights, 0.1), logits)
    return {leaf.dtype for leaf in jax.tree.leaves(backward) if getattr(leaf, "ndim", 0) == 3}

  assert jnp.dtype(jnp.float32) in kept(definition_loss)
  assert kept(lambda *a: losses.label_smoothed_cross_entropy(*a)[0]) == {jnp.dtype(jnp.bfloat16)}


def test_chunks_must_divide_the_length():
  features, table, targets, weights = projection_problem(length=8)
  with pytest.raises(ValueError, match="loss_chunks=3 does not divide the target length 8"):
    losses.loss_and_accuracy(features, targets, weights, lambda x: x @ table.T, 0.1, 3)
  config = tiny_config_file.get_config()
  config.train.loss_chunks = 5
  with pytest.raises(ValueError, match=r"config.train.loss_chunks=5 must divide "
                                       r"config.data.packed_length=\d+"):
    steps.validate(config)


def test_chunked_logits_never_exist_whole():
  """The compiled chunked loss + gradient holds no [B, L, N] array; the whole one does."""
  features, table, targets, weights = projection_problem(rows=4, length=16, vocab=96)

  def grad_text(chunks):
    def loss(f, t):
      project = lambda x: jnp.einsum("bld,nd->bln", x, t)
      return losses.loss_and_accuracy(f, targets, weights, project, 0.1, chunks)[0]
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(features, table).compile().as_text()

  assert "f32[4,16,96]" in grad_text(1)
  chunked = grad_text(4)
  assert "f32[4,16,96]" not in chunked and "f32[4,4,96]" in chunked


def test_bfloat16_logits_keep_the_loss_within_bfloat16_rounding():
  config = ModelConfig(vocab_size=97, d_model=32, num_heads=4, d_ff=64, encoder_layers=1,
                       decoder_layers=1, max_len=32)
  inputs = jnp.asarray(np.random.RandomState(1).randint(3, 97, (2, 9)))
  targets = jnp.asarray(np.random.RandomState(2).randint(3, 97, (2, 7)))
  weights = jnp.ones((2, 7), jnp.float32)
  params = Transformer(config).init(jax.random.PRNGKey(0), inputs, targets)["params"]
  results = {}
  for dtype in ("float32", "bfloat16"):
    model = Transformer(config.replace(logits_dtype=dtype))
    logits = model.apply({"params": params}, inputs, targets)
    assert logits.dtype == jnp.dtype(dtype)
    results[dtype] = losses.label_smoothed_cross_entropy(logits, targets, weights, 0.1)[0]
  # bfloat16 keeps 8 mantissa bits: logits of size ~3 are off by <= 2^-8 * 4 each.
  np.testing.assert_allclose(results["bfloat16"], results["float32"], rtol=2e-2)
  assert float(results["bfloat16"]) != float(results["float32"])


def test_untied_projection_equals_the_model_logits():
  config = ModelConfig(vocab_size=61, d_model=16, num_heads=2, d_ff=32, encoder_layers=1,
                       decoder_layers=1, max_len=16, tie_output_embedding=False)
  model = Transformer(config)
  inputs, targets = jnp.ones((2, 5), jnp.int32), jnp.full((2, 4), 3, jnp.int32)
  params = model.init(jax.random.PRNGKey(0), inputs, targets)["params"]
  features = model.apply({"params": params}, inputs, targets, features_only=True)
  projected = model.apply({"params": params}, features, method=Transformer.project)
  np.testing.assert_allclose(projected, model.apply({"params": params}, inputs, targets),
                             rtol=1e-6)


def test_probabilities_stored_in_bfloat16_have_the_softmax_gradient():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(2, 3, 5, 7) * 3, jnp.float32)
  cotangent = jnp.asarray(rng.randn(2, 3, 5, 7), jnp.float32)
  for dtype, tolerance in ((jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)):
    probs, backward = jax.vjp(lambda x: attention.softmax_stored_as(x, dtype), logits)
    assert probs.dtype == dtype
    expected_probs, expected_backward = jax.vjp(lambda x: jax.nn.softmax(x, -1), logits)
    np.testing.assert_allclose(probs.astype(jnp.float32), expected_probs, atol=tolerance)
    np.testing.assert_allclose(backward(cotangent.astype(dtype))[0],
                               expected_backward(cotangent)[0], atol=tolerance * 4)
    # What the backward pass keeps: the probabilities, in `dtype`, and nothing in float32.
    kept = [leaf for leaf in jax.tree.leaves(backward) if getattr(leaf, "ndim", 0) == 4]
    assert [leaf.dtype for leaf in kept] == [jnp.dtype(dtype)]


def test_compute_dtype_probabilities_train_like_float32():
  config = tiny_config_file.get_config()
  config.model.update(dtype="bfloat16", attention_dropout_rate=0.1)
  batch = sharding.global_batch(
      {k: np.asarray(v) for k, v in training.dummy_batch(8, config.data.packed_length).items()},
      sharding.make_mesh(1, 1, 1, jax.devices()[:1]))
  batch = {k: (v + 3) if k in ("inputs", "targets") else v + 1 for k, v in batch.items()}
  results = {}
  for probs in ("float32", "compute"):
    config.model.attention_probs_dtype = probs
    setup = steps.make_setup(config, devices=jax.devices()[:1])
    state, metrics = steps.compiled_train_step(setup, config)(steps.initial_state(setup), batch)
    results[probs] = float(metrics["loss_sum"]), float(metrics["grad_norm"])
  np.testing.assert_allclose(results["compute"], results["float32"], rtol=2e-2)
  assert results["compute"] != results["float32"]


def _random_bit_shapes(config, mesh_shape):
  """The compiled train step for one device of the mesh, and its uint32 array shapes (random
  bits are the only uint32 arrays of the step)."""
  config = config.copy_and_resolve_references()
  config.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
  setup = steps.make_setup(config, devices=jax.devices()[:int(np.prod(mesh_shape))])
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(setup.mesh))
           for k, v in training.dummy_batch(config.data.batch_size,
                                            config.data.packed_length).items()}
  text = steps.compiled_train_step(setup, config).lower(setup.abstract_state, batch).compile(
  ).as_text()
  return text, {tuple(int(d) for d in dims.split(","))
                for dims in re.findall(r"u32\[([\d,]+)\]", text)}


def test_rbg_draws_only_each_devices_share_on_a_sharded_mesh():
  config = tiny_config_file.get_config()
  config.train.prng_impl = "rbg"
  rows, length = config.data.batch_size, config.data.packed_length
  width = config.model.d_model
  text, shapes = _random_bit_shapes(config, (1, 1, 1))
  assert re.search("rng.bit.generator", text) and (rows, length, width) in shapes  # rbg
  text, shapes = _random_bit_shapes(config, (8, 1, 1))
  assert not re.search("rng.bit.generator", text)
  assert (rows // 8, length, width) in shapes and (rows, length, width) not in shapes
  assert steps.dropout_prng_impl(config, sharding.make_mesh(8, 1, 1, jax.devices())) == \
      "threefry2x32"


def test_rbg_configured_runs_train_alike_on_every_sharded_mesh():
  """On sharded meshes an rbg config draws threefry masks from the state's key: equal losses on
  (8, 1, 1) and (2, 2, 2), and the state keeps rbg's key shape (checkpoints restore anywhere)."""
  config = tiny_config_file.get_config()
  config.train.update(prng_impl="rbg", warmup_steps=2)
  batch = {k: np.array(v) for k, v in training.dummy_batch(16, config.data.packed_length
                                                             ).items()}
  rng = np.random.RandomState(0)
  for feature in ("inputs", "targets"):
    batch[feature][:, :20] = rng.randint(3, 60, (16, 20))
    batch[f"{feature}_segmentation"][:, :20] = 1
    batch[f"{feature}_position"][:, :20] = np.arange(20)
  results = []
  for mesh_shape in ((8, 1, 1), (2, 2, 2)):
    config.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
    setup = steps.make_setup(config, devices=jax.devices())
    state = steps.initial_state(setup)
    assert state.rng.shape == (4,)
    state, metrics = steps.compiled_train_step(setup, config)(
        state, sharding.global_batch(batch, setup.mesh))
    results.append(float(metrics["loss_sum"]))
  np.testing.assert_allclose(results[1], results[0], rtol=2e-5)
