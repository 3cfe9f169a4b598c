"""Scaled dot-product and multi-head attention against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from transformer import config as configs
from transformer.attention import (MultiHeadAttention, blockwise_attention, fused_attention,
                                  reference_attention)
from transformer.masks import Mask

from helpers import numpy_attention, numpy_multi_head_attention


def random_qkv(seed, batch=2, q_len=5, kv_len=6, heads=3, d_k=4, d_v=5):
  rng = np.random.RandomState(seed)
  q = rng.randn(batch, q_len, heads, d_k).astype(np.float32)
  k = rng.randn(batch, kv_len, heads, d_k).astype(np.float32)
  v = rng.randn(batch, kv_len, heads, d_v).astype(np.float32)
  mask = rng.rand(batch, 1, q_len, kv_len) > 0.3
  mask[..., 0] = True  # every query sees at least one key
  return q, k, v, mask


def test_reference_attention_matches_numpy():
  q, k, v, mask = random_qkv(0)
  out, weights = reference_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                     jnp.asarray(mask))
  np.testing.assert_allclose(out, numpy_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  assert not np.any(np.asarray(weights)[~np.broadcast_to(mask, weights.shape)])


@pytest.mark.parametrize("block_size", [2, 4, 16])
def test_blockwise_kernel_equals_reference(block_size):
  q, k, v, mask = random_qkv(5, q_len=7, kv_len=9)
  mask[1, 0, 3] = False  # a fully masked query row
  reference, _ = reference_attention(q, k, v, mask)
  np.testing.assert_allclose(blockwise_attention(q, k, v, mask, block_size), reference,
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(blockwise_attention(q, k, v, None, block_size),
                             reference_attention(q, k, v, None)[0], atol=1e-5, rtol=1e-5)
  grad = lambda f: jax.grad(lambda q: jnp.sum(f(q) ** 2))(jnp.asarray(q))
  np.testing.assert_allclose(grad(lambda q: blockwise_attention(q, k, v, mask, block_size)),
                             grad(lambda q: reference_attention(q, k, v, mask)[0]), atol=1e-4,
                             rtol=1e-4)


@pytest.mark.parametrize("block_size", [2, 3, 16])
@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_kernel_builds_each_block_mask_from_segment_ids(block_size, causal):
  """Packed and padded rows (a fully masked query row too): segment ids, block by block, give
  the reference's output and gradients under the mask those ids describe."""
  q, k, v, _ = random_qkv(6, q_len=7, kv_len=7)
  segments = np.array([[1, 1, 2, 2, 2, 3, 0], [1, 1, 1, 1, 0, 0, 0]], np.int32)
  mask = Mask(None, causal=causal, query_segments=jnp.asarray(segments),
              key_segments=jnp.asarray(segments))
  dense = segments[:, None, :, None] == segments[:, None, None, :]
  dense &= (segments > 0)[:, None, :, None]
  if causal:
    dense &= np.tril(np.ones((7, 7), bool))
  reference = lambda q: reference_attention(q, k, v, dense)[0]
  blockwise = lambda q: blockwise_attention(q, k, v, mask, block_size)
  np.testing.assert_allclose(blockwise(q), reference(q), atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(blockwise(q), blockwise_attention(q, k, v, dense, block_size))
  grad = lambda f: jax.grad(lambda q: jnp.sum(f(q) ** 2))(jnp.asarray(q))
  np.testing.assert_allclose(grad(blockwise), grad(reference), atol=1e-4, rtol=1e-4)


def test_fused_kernel_equals_reference():
  q, k, v, mask = random_qkv(1, d_v=4)
  reference, _ = reference_attention(q, k, v, mask)
  np.testing.assert_allclose(fused_attention(q, k, v, mask), reference, atol=1e-5, rtol=1e-5)


def test_softmax_is_float32_in_bfloat16():
  q, k, v, mask = random_qkv(2)
  as_bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
  out, weights = reference_attention(as_bf16(q), as_bf16(k), as_bf16(v), mask)
  assert weights.dtype == jnp.float32 and out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), numpy_attention(q, k, v, mask), atol=5e-2)


def test_attention_dropout_only_when_training():
  q, k, v, mask = random_qkv(3)
  plain, _ = reference_attention(q, k, v, mask)
  dropped, _ = reference_attention(q, k, v, mask, jax.random.PRNGKey(0), dropout_rate=0.5)
  assert not np.allclose(plain, dropped)


@pytest.mark.parametrize("kernel", ["xla", "jax", "blockwise"])
def test_multi_head_attention_matches_numpy(kernel):
  config = configs.tiny(d_model=12, num_heads=3, attention_kernel=kernel)
  rng = np.random.RandomState(4)
  x_q = rng.randn(2, 5, 12).astype(np.float32)
  x_kv = rng.randn(2, 6, 12).astype(np.float32)
  mask = rng.rand(2, 1, 5, 6) > 0.3
  mask[..., 0] = True
  layer = MultiHeadAttention(config)
  params = nn.unbox(layer.init(jax.random.PRNGKey(0), x_q, x_kv, mask)["params"])
  out = layer.apply({"params": params}, x_q, x_kv, mask)

  expected = numpy_multi_head_attention(params, x_q, x_kv, mask)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_projection_initialization():
  """Xavier-uniform kernels over the full d_model x (h * d_k) matrix and zero biases."""
  config = configs.base(d_model=512, num_heads=8)
  x = jnp.zeros((1, 2, 512))
  params = nn.unbox(MultiHeadAttention(config).init(jax.random.PRNGKey(0), x, x, None)["params"])
  kernel = np.asarray(params["query"]["kernel"]).reshape(512, 512)
  limit = np.sqrt(6.0 / (512 + 512))
  assert np.abs(kernel).max() <= limit
  np.testing.assert_allclose(kernel.std(), limit / np.sqrt(3.0), rtol=0.02)
  assert not np.any(np.asarray(params["query"]["bias"]))
