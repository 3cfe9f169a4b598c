"""Positional encoding, embeddings, feed-forward and whole layers against NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from transformer import config as configs
from transformer.layers import (DecoderLayer, Embedding, EncoderLayer, FeedForward,
                                PositionalEncoding, sinusoidal_encoding)

from helpers import numpy_feed_forward, numpy_layer_norm, numpy_multi_head_attention


@pytest.mark.parametrize("d_model", [8, 7, 512])
def test_sinusoidal_encoding_matches_the_formula(d_model):
  positions = np.arange(50)
  expected = np.zeros((50, d_model))
  for pos in positions:
    for dim in range(d_model):
      i = dim // 2
      angle = pos / 10000 ** (2 * i / d_model)
      expected[pos, dim] = math.sin(angle) if dim % 2 == 0 else math.cos(angle)
  np.testing.assert_allclose(sinusoidal_encoding(jnp.asarray(positions), d_model), expected,
                             atol=2e-5)


def test_positional_encoding_uses_packed_positions():
  config = configs.tiny(d_model=8)
  x = jnp.zeros((1, 5, 8))
  positions = jnp.array([[0, 1, 2, 0, 1]])
  out = PositionalEncoding(config).apply({}, x, positions)
  np.testing.assert_allclose(out[0, 3:], out[0, :2])


def test_learned_positional_encoding_is_a_table():
  config = configs.tiny(d_model=8, positional_encoding="learned", max_len=10)
  x = jnp.zeros((1, 4, 8))
  variables = PositionalEncoding(config).init(jax.random.PRNGKey(0), x)
  table = nn.unbox(variables["params"])["position_embedding"]
  assert table.shape == (10, 8)
  np.testing.assert_allclose(PositionalEncoding(config).apply(variables, x)[0], table[:4])


def test_no_positional_encoding_is_identity():
  config = configs.tiny(positional_encoding="none")
  x = jnp.ones((1, 3, config.d_model))
  np.testing.assert_array_equal(PositionalEncoding(config).apply({}, x), x)


def test_embedding_scaling_init_and_tied_logits():
  config = configs.tiny(d_model=256, vocab_size=4000)
  layer = Embedding(config, 4000)
  ids = jnp.array([[3, 7]])
  params = nn.unbox(layer.init(jax.random.PRNGKey(0), ids)["params"])
  table = np.asarray(params["embedding"])
  np.testing.assert_allclose(table.std(), 256**-0.5, rtol=0.02)  # N(0, d_model^-0.5)
  np.testing.assert_allclose(layer.apply({"params": params}, ids)[0], table[[3, 7]] * 16.0,
                             rtol=1e-6)
  x = np.random.RandomState(0).randn(1, 2, 256).astype(np.float32)
  logits = layer.apply({"params": params}, x, method=Embedding.attend)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, x @ table.T, rtol=1e-4, atol=1e-4)


def test_feed_forward_matches_numpy():
  config = configs.tiny(d_model=6, num_heads=2, d_ff=10)
  x = np.random.RandomState(0).randn(2, 3, 6).astype(np.float32)
  params = nn.unbox(FeedForward(config).init(jax.random.PRNGKey(1), x)["params"])
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases
  np.testing.assert_allclose(FeedForward(config).apply({"params": params}, x),
                             numpy_feed_forward(x, params), atol=1e-5, rtol=1e-5)


def _perturbed(params, seed=0):
  """Random non-trivial LayerNorm scales/biases and attention biases."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.RandomState(seed)
  return jax.tree.unflatten(tree, [x + 0.1 * rng.randn(*x.shape) for x in leaves])


@pytest.mark.parametrize("normalization", ["post", "pre"])
def test_encoder_layer_matches_numpy(normalization):
  config = configs.tiny(d_model=8, num_heads=2, d_ff=16, normalization=normalization)
  x = np.random.RandomState(1).randn(2, 4, 8).astype(np.float32)
  mask = np.ones((2, 1, 4, 4), bool)
  mask[1, ..., 3] = False
  layer = EncoderLayer(config)
  params = _perturbed(nn.unbox(layer.init(jax.random.PRNGKey(0), x, mask)["params"]))
  out = layer.apply({"params": params}, x, mask)

  ln = lambda v, block: numpy_layer_norm(v, params[block]["norm"])
  attention = lambda v: numpy_multi_head_attention(params["self_attention"], v, v, mask)
  ffn = lambda v: numpy_feed_forward(v, params["feed_forward"])
  if normalization == "post":  # LayerNorm(x + Sublayer(x))
    h = ln(x + attention(x), "self_attention_block")
    expected = ln(h + ffn(h), "feed_forward_block")
  else:  # x + Sublayer(LayerNorm(x))
    h = x + attention(ln(x, "self_attention_block"))
    expected = h + ffn(ln(h, "feed_forward_block"))
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_decoder_layer_matches_numpy():
  config = configs.tiny(d_model=8, num_heads=2, d_ff=16)
  rng = np.random.RandomState(2)
  y = rng.randn(2, 3, 8).astype(np.float32)
  encoded = rng.randn(2, 5, 8).astype(np.float32)
  self_mask = np.broadcast_to(np.tril(np.ones((3, 3), bool)), (2, 1, 3, 3))
  cross_mask = np.ones((2, 1, 3, 5), bool)
  cross_mask[0, ..., 4] = False
  layer = DecoderLayer(config)
  params = _perturbed(nn.unbox(
      layer.init(jax.random.PRNGKey(0), y, encoded, self_mask, cross_mask)["params"]))
  out = layer.apply({"params": params}, y, encoded, self_mask, cross_mask)

  ln = lambda v, block: numpy_layer_norm(v, params[block]["norm"])
  h = ln(y + numpy_multi_head_attention(params["self_attention"], y, y, self_mask),
         "self_attention_block")
  # Queries from the decoder, keys and values from the encoder output.
  h = ln(h + numpy_multi_head_attention(params["encoder_decoder_attention"], h, encoded,
                                        cross_mask), "encoder_decoder_attention_block")
  expected = ln(h + numpy_feed_forward(h, params["feed_forward"]), "feed_forward_block")
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)


def test_dropout_on_sublayer_outputs_only_in_training():
  config = configs.tiny(dropout_rate=0.5)
  x = jnp.asarray(np.random.RandomState(3).randn(1, 4, config.d_model), jnp.float32)
  mask = jnp.ones((1, 1, 4, 4), bool)
  variables = EncoderLayer(config).init(jax.random.PRNGKey(0), x, mask)
  evaluate = lambda: EncoderLayer(config, deterministic=True).apply(variables, x, mask)
  train = lambda seed: EncoderLayer(config, deterministic=False).apply(
      variables, x, mask, rngs={"dropout": jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(evaluate(), evaluate())
  assert not np.allclose(train(1), train(2))
  assert not np.allclose(train(1), evaluate())
