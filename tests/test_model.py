"""The whole Transformer: masking, packing, incremental decoding, options that keep outputs."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from transformer import config as configs
from transformer.model import Transformer, shift_right

from helpers import count, init_params, random_tokens


@functools.lru_cache(maxsize=None)
def _compiled_forward(config):
  return jax.jit(lambda params, inputs, targets, **kwargs: Transformer(config).apply(
      {"params": params}, inputs, targets, **kwargs))


def one_layer(**overrides) -> configs.ModelConfig:
  """The tiny model with one layer per stack, for what a test checks per layer: it compiles in
  about half the time. Stacks of two: the two-layer cases of cached decoding, scan and remat,
  parameter counts."""
  return configs.tiny(**{"encoder_layers": 1, "decoder_layers": 1, **overrides})


def forward(config, params, inputs, targets, **kwargs):
  """Teacher-forced logits, compiled once per config."""
  return _compiled_forward(config)(params, inputs, targets, **kwargs)


def test_shift_right_restarts_each_packed_sentence():
  targets = jnp.array([[5, 6, 7, 8, 9, 0]])
  segments = jnp.array([[1, 1, 2, 2, 2, 0]])
  np.testing.assert_array_equal(shift_right(targets, segments, 0), [[0, 5, 0, 7, 8, 0]])
  np.testing.assert_array_equal(shift_right(targets, None, 0), [[0, 5, 6, 7, 8, 9]])


def test_decoder_is_causal():
  config = one_layer()
  model, params = init_params(config)
  inputs = random_tokens(0, (2, 7), config.vocab_size)
  targets = random_tokens(1, (2, 6), config.vocab_size)
  logits = forward(config, params, inputs, targets)
  for t in range(6):
    changed = targets.at[:, t:].set(random_tokens(2 + t, (2, 6 - t), config.vocab_size))
    # logits[:, i] predicts target i from targets < i, so positions <= t must not move.
    np.testing.assert_allclose(forward(config, params, inputs, changed)[:, :t + 1],
                               logits[:, :t + 1], atol=1e-6)
  changed = forward(config, params, inputs, targets.at[:, 0].set(targets[0, 0] % 60 + 3))
  assert not np.allclose(changed[:, 1:], logits[:, 1:])


def test_padding_changes_nothing_for_real_tokens():
  config = one_layer()
  _, params = init_params(config)
  inputs = random_tokens(0, (2, 6), config.vocab_size).at[1, 4:].set(0)
  targets = random_tokens(1, (2, 5), config.vocab_size).at[1, 3:].set(0)
  logits = forward(config, params, inputs, targets)
  longer = forward(config, params, jnp.pad(inputs, ((0, 0), (0, 5))),
                   jnp.pad(targets, ((0, 0), (0, 4))))
  segments_in = (inputs > 0).astype(jnp.int32)
  segments_out = (targets > 0).astype(jnp.int32)
  real = np.asarray(segments_out, bool)
  np.testing.assert_allclose(np.asarray(longer)[:, :5][real], np.asarray(logits)[real], atol=1e-5)
  # With segment ids, whatever sits in the padded positions is ignored.
  garbage_in = jnp.where(segments_in > 0, inputs, 9)
  garbage_out = jnp.where(segments_out > 0, targets, 11)
  segmented = forward(config, params, garbage_in, garbage_out, inputs_segmentation=segments_in,
                      targets_segmentation=segments_out)
  np.testing.assert_allclose(np.asarray(segmented)[real], np.asarray(logits)[real], atol=1e-5)


@pytest.mark.parametrize("positional_encoding, kernel", [("sinusoidal", "xla"),
                                                          ("learned", "xla"),
                                                          ("sinusoidal", "blockwise")])
def test_packed_batch_equals_pairs_one_by_one(positional_encoding, kernel):
  config = one_layer(positional_encoding=positional_encoding, attention_kernel=kernel,
                     attention_block_size=4)
  _, params = init_params(config)
  pairs = [(random_tokens(10 + i, (1, n), config.vocab_size),
            random_tokens(20 + i, (1, m), config.vocab_size))
           for i, (n, m) in enumerate([(4, 3), (2, 5), (3, 2)])]
  pack = lambda parts: jnp.concatenate(parts + [jnp.zeros((1, 2), jnp.int32)], axis=1)
  segment_ids = lambda lengths: pack([jnp.full((1, n), i + 1) for i, n in enumerate(lengths)])
  position_ids = lambda lengths: pack([jnp.arange(n)[None] for n in lengths])
  source_lengths = [s.shape[1] for s, _ in pairs]
  target_lengths = [t.shape[1] for _, t in pairs]
  packed = forward(config, params, pack([s for s, _ in pairs]), pack([t for _, t in pairs]),
                   inputs_segmentation=segment_ids(source_lengths),
                   targets_segmentation=segment_ids(target_lengths),
                   inputs_positions=position_ids(source_lengths),
                   targets_positions=position_ids(target_lengths))
  offset = 0
  for (source, target), length in zip(pairs, target_lengths):
    alone = forward(config, params, source, target)
    np.testing.assert_allclose(packed[:, offset:offset + length], alone, atol=1e-5)
    offset += length


@pytest.mark.parametrize("scan_layers", [False, True])
def test_the_blockwise_kernel_never_materializes_a_whole_mask(scan_layers):
  """Packed rows of 64 tokens in blocks of 16: the compiled forward and backward pass hold no
  `[B, 1, 64, 64]` array with the blockwise kernel, and do with the reference kernel."""
  tokens = random_tokens(0, (2, 64), 50)
  segments = jnp.concatenate([jnp.full((2, 40), 1), jnp.full((2, 20), 2),
                              jnp.zeros((2, 4), jnp.int32)], axis=1)
  for kernel, materialized in (("xla", True), ("blockwise", False)):
    config = one_layer(attention_kernel=kernel, attention_block_size=16, scan_layers=scan_layers)
    _, params = init_params(config)
    loss = lambda p: jnp.sum(Transformer(config).apply(
        {"params": p}, tokens, tokens, inputs_segmentation=segments,
        targets_segmentation=segments) ** 2)
    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert bool(re.search(r"\[2,1,64,64\]", hlo)) == materialized, kernel


def incremental_logits(config, params, inputs, targets):
  """Teacher-forced logits computed one step at a time with the key/value cache."""
  model = Transformer(config)
  encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
  _, variables = model.apply({"params": params}, encoded, inputs, targets.shape[1],
                             method=Transformer.init_cache, mutable=["cache"])
  cache = variables["cache"]
  decoder_inputs = shift_right(targets, None, config.pad_id)
  step = jax.jit(lambda cache, token: model.apply(
      {"params": params, "cache": cache}, None, inputs, token, decode=True,
      method=Transformer.decode, mutable=["cache"]))
  steps = []
  for t in range(targets.shape[1]):
    logits, variables = step(cache, decoder_inputs[:, t:t + 1])
    cache = variables["cache"]
    steps.append(logits)
  return jnp.concatenate(steps, axis=1)


@pytest.mark.parametrize("config", [
    configs.tiny(), configs.tiny(scan_layers=True),  # two layers: each keeps its own cache
    one_layer(normalization="pre"), one_layer(positional_encoding="learned"),
    one_layer(share_embeddings=False, target_vocab_size=50, tie_output_embedding=False),
    one_layer(attention_kernel="blockwise", attention_block_size=4),
], ids=["two_layers", "two_layers_scanned", "pre_ln", "learned_positions", "separate_vocab",
        "blockwise"])
def test_cached_decoding_equals_full_forward(config):
  _, params = init_params(config)
  inputs = random_tokens(0, (3, 7), 50).at[2, 5:].set(0)
  targets = random_tokens(1, (3, 6), 50)
  np.testing.assert_allclose(incremental_logits(config, params, inputs, targets),
                             forward(config, params, inputs, targets), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["jax", "blockwise"])
def test_attention_kernels_give_the_same_model(kernel):
  config = one_layer(attention_block_size=4)
  _, params = init_params(config)
  inputs = random_tokens(0, (2, 9), config.vocab_size).at[1, 6:].set(0)
  targets = random_tokens(1, (2, 7), config.vocab_size).at[1, 5:].set(0)
  real = np.asarray(targets > 0)
  reference = np.asarray(forward(config, params, inputs, targets))[real]
  other = np.asarray(forward(config.replace(attention_kernel=kernel), params, inputs,
                             targets))[real]
  np.testing.assert_allclose(other, reference, atol=1e-5, rtol=1e-5)


def test_decode_cache_holds_encoder_keys_values_once():
  config = one_layer()
  model, params = init_params(config)
  inputs = random_tokens(0, (2, 7), config.vocab_size)
  encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
  _, variables = model.apply({"params": params}, encoded, inputs, 4,
                             method=Transformer.init_cache, mutable=["cache"])
  cross = variables["cache"]["decoder"]["layers"]["layer_0"]["encoder_decoder_attention"]
  assert cross["cross_key"].shape == (2, 7, config.num_heads, config.d_k)
  self_cache = variables["cache"]["decoder"]["layers"]["layer_0"]["self_attention"]
  assert self_cache["cached_key"].shape == (2, 4, config.num_heads, config.d_k)


def _stack_layers(params, num_layers):
  """Unscanned `layer_i` parameters -> the scanned layout (a leading `layers` axis)."""
  stacked = [params[f"layer_{i}"] for i in range(num_layers)]
  return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *stacked)}


def test_scan_and_remat_leave_outputs_and_gradients_unchanged():
  config = configs.tiny(dropout_rate=0.0)
  _, params = init_params(config)
  scanned_params = jax.tree.map(lambda x: x, params)
  for stack in ("encoder", "decoder"):
    scanned_params[stack]["layers"] = _stack_layers(params[stack]["layers"], 2)
  inputs = random_tokens(0, (2, 7), config.vocab_size)
  targets = random_tokens(1, (2, 5), config.vocab_size)

  def loss_and_grads(variant, variant_params):
    loss = lambda p: jnp.mean(forward(variant, p, inputs, targets) ** 2)
    return jax.jit(jax.value_and_grad(loss))(variant_params)

  loss, grads = loss_and_grads(config, params)
  for overrides, variant_params in [({"remat_policy": "full"}, params),
                                    ({"remat_policy": "dots"}, params),
                                    ({"scan_layers": True}, scanned_params),
                                    ({"scan_layers": True, "remat_policy": "dots_no_batch"},
                                     scanned_params)]:
    variant_loss, variant_grads = loss_and_grads(config.replace(**overrides), variant_params)
    np.testing.assert_allclose(variant_loss, loss, rtol=1e-5)
    expected = grads if not overrides.get("scan_layers") else scanned_grads(grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
                 variant_grads, expected)


def scanned_grads(grads):
  out = jax.tree.map(lambda x: x, grads)
  for stack in ("encoder", "decoder"):
    out[stack]["layers"] = _stack_layers(grads[stack]["layers"], 2)
  return out


def test_scanned_parameters_carry_the_layers_axis_name():
  config = one_layer(scan_layers=True)
  variables = Transformer(config).init(jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32),
                                       jnp.ones((1, 3), jnp.int32))
  specs = nn.get_partition_spec(variables)["params"]
  query = specs["encoder"]["layers"]["layers"]["self_attention"]["query"]["kernel"]
  assert tuple(query) == ("layers", "embed", "heads", "kv")


def test_jit_and_grad_reach_every_parameter():
  config = one_layer()
  _, params = init_params(config)
  inputs = random_tokens(0, (2, 7), config.vocab_size)
  targets = random_tokens(1, (2, 5), config.vocab_size)

  @jax.jit
  def loss_fn(p, rng):
    logits = Transformer(config).apply({"params": p}, inputs, targets, deterministic=False,
                                       rngs={"dropout": rng})
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

  grads = jax.grad(loss_fn)(params, jax.random.PRNGKey(0))
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)), path
    assert np.any(grad != 0), path


def test_bfloat16_compute_is_finite_and_close_to_float32():
  config = one_layer()
  _, params = init_params(config)
  inputs = random_tokens(0, (2, 7), config.vocab_size)
  targets = random_tokens(1, (2, 5), config.vocab_size)
  full = forward(config, params, inputs, targets)
  half = forward(config.replace(dtype="bfloat16"), params, inputs, targets)
  assert half.dtype == jnp.float32  # logits stay float32
  assert np.all(np.isfinite(half))
  np.testing.assert_allclose(jax.nn.softmax(half), jax.nn.softmax(full), atol=2e-2)


def test_separate_vocabularies():
  config = one_layer(vocab_size=40, target_vocab_size=30, share_embeddings=False)
  _, params = init_params(config)
  assert params["source_embedding"]["embedding"].shape == (40, config.d_model)
  assert params["target_embedding"]["embedding"].shape == (30, config.d_model)
  logits = forward(config, params, random_tokens(0, (1, 4), 40), random_tokens(1, (1, 3), 30))
  assert logits.shape == (1, 3, 30)


@pytest.mark.parametrize("overrides", [
    {}, {"normalization": "pre"}, {"positional_encoding": "learned"},
    {"share_embeddings": False}, {"tie_output_embedding": False},
    {"share_embeddings": False, "target_vocab_size": 50}, {"d_k": 4, "d_v": 12},
    {"scan_layers": True},
])
def test_parameter_count_equals_closed_form(overrides):
  config = configs.tiny(**overrides)
  _, params = init_params(config)
  assert count(params) == config.num_params()


@pytest.mark.parametrize("preset, expected_millions", [("base", 63.1), ("big", 214.2)])
def test_preset_sizes(preset, expected_millions):
  config = configs.PRESETS[preset]()
  model = Transformer(config)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32),
                          jnp.ones((1, 4), jnp.int32))
  total = count(nn.unbox(shapes["params"]))
  assert total == config.num_params()
  assert round(total / 1e6, 1) == expected_millions
