"""Scaled dot-product attention (Sec. 3.2.1) and multi-head attention (Sec. 3.2.2).

Glossary of dimension letters: B batch, Q query length, S key/value length, H heads,
K per-head query/key size d_k, V per-head value size d_v, D d_model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from transformer import masks
from transformer.config import ModelConfig
from transformer.masks import Mask

# A large negative logit for masked positions: finite so that fully masked rows stay NaN-free.
_MASKED_LOGIT = -1e10


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax_stored_as(logits: jnp.ndarray, dtype: jnp.dtype) -> jnp.ndarray:
  """softmax over the last axis, computed in float32 and returned (and kept for the backward
  pass) in `dtype`: the backward pass needs only the probabilities, so in bfloat16 the
  `[B, H, Q, S]` residual takes half the memory of float32's."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)


def _softmax_forward(logits, dtype):
  probs = softmax_stored_as(logits, dtype)
  return probs, probs


def _softmax_backward(dtype, probs, grad):
  del dtype
  probs, grad = probs.astype(jnp.float32), grad.astype(jnp.float32)
  # d softmax: p * (g - sum(g * p)), in float32 from the stored probabilities.
  return (probs * (grad - jnp.sum(grad * probs, axis=-1, keepdims=True)),)


softmax_stored_as.defvjp(_softmax_forward, _softmax_backward)


def reference_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                        mask: jnp.ndarray | None, dropout_rng: jax.Array | None = None,
                        dropout_rate: float = 0.0, probs_dtype: jnp.dtype = jnp.float32
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """softmax(Q K^T / sqrt(d_k)) V, with the logits and softmax in float32.

  Args:
    query: `[B, Q, H, K]`; key: `[B, S, H, K]`; value: `[B, S, H, V]`.
    mask: boolean, broadcastable to `[B, H, Q, S]`; True where attending is allowed.
    dropout_rng: if given, dropout with `dropout_rate` is applied to the attention weights.
    probs_dtype: the dtype of Q K^T and of the probabilities kept for the product with V and
      the backward pass: float32, or the compute dtype to halve their memory (the softmax is
      computed in float32 either way).
  Returns:
    The attended values `[B, Q, H, V]` (in the query's dtype) and weights `[B, H, Q, S]`
    (in `probs_dtype`).
  """
  scale = 1.0 / jnp.sqrt(jnp.float32(query.shape[-1]))
  # The product (what remat policies save) in probs_dtype; the scaling and softmax in float32.
  logits = jnp.einsum("bqhk,bshk->bhqs", query, key, preferred_element_type=probs_dtype)
  logits = logits.astype(jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, _MASKED_LOGIT)
  if jnp.dtype(probs_dtype) == jnp.float32:
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    weights = softmax_stored_as(logits, jnp.dtype(probs_dtype))
  attended_weights = weights
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    attended_weights = jnp.where(keep, weights / jnp.asarray(1.0 - dropout_rate, weights.dtype),
                                 jnp.zeros((), weights.dtype))
  output = jnp.einsum("bhqs,bshv->bqhv", attended_weights.astype(value.dtype), value)
  return output, weights


def fused_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                    mask: jnp.ndarray | None) -> jnp.ndarray:
  """The same function through `jax.nn.dot_product_attention` (fused kernels on GPU)."""
  return jax.nn.dot_product_attention(query, key, value, mask=mask)


def cudnn_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                    mask: Mask | None) -> jnp.ndarray:
  """The same function as cuDNN's fused (flash) attention kernel; bfloat16/float16, GPU only.

  Right-padded rows pass their lengths and causality (`Mask.query_lengths`, `key_lengths`,
  `causal`), so no `[B, 1, Q, S]` mask is materialized and cuDNN skips the masked blocks. Packed
  rows (segment ids) pass the boolean mask, which cuDNN applies as an additive bias.
  """
  if mask is None:
    return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")
  if mask.query_lengths is None:
    return jax.nn.dot_product_attention(query, key, value, mask=mask.dense,
                                        is_causal=mask.causal, implementation="cudnn")
  return jax.nn.dot_product_attention(query, key, value, is_causal=mask.causal,
                                      query_seq_lengths=mask.query_lengths,
                                      key_value_seq_lengths=mask.key_lengths,
                                      implementation="cudnn")


def blockwise_attention(query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray,
                        mask: Mask | jnp.ndarray | None, block_size: int = 512) -> jnp.ndarray:
  """The same function computed block by block with an online softmax (memory-efficient).

  Queries are processed `block_size` at a time; for each query block a scan over key blocks
  keeps the running maximum `m`, normalizer `l` and weighted sum `acc` (Milakov & Gimelshein
  2018; Rabe & Staats 2021), so the `[Q, S]` logits never exist at once: memory grows as
  O(Q * block_size) instead of O(Q * S). A `Mask` with segment ids (the model's masks) is built
  block by block from them, so no `[B, 1, Q, S]` mask exists either; a boolean array (or a `Mask`
  without segment ids: the decoding cache's) is sliced block by block. The scan body is
  rematerialized in the backward pass.
  """
  batch, q_len, heads, d_k = query.shape
  s_len, d_v = key.shape[1], value.shape[-1]
  q_block, k_block = min(block_size, q_len), min(block_size, s_len)
  q_blocks, k_blocks = -(-q_len // q_block), -(-s_len // k_block)
  pad = lambda x, length, to: jnp.pad(x, [(0, 0), (0, to - length)] + [(0, 0)] * (x.ndim - 2))
  query = pad(query, q_len, q_blocks * q_block) * (1.0 / jnp.sqrt(jnp.float32(d_k))).astype(
      query.dtype)
  key, value = pad(key, s_len, k_blocks * k_block), pad(value, s_len, k_blocks * k_block)
  # Padded queries and keys are masked out: segment id 0, or False in the boolean mask.
  block_mask = _block_masks(mask, q_len, s_len, q_blocks * q_block, k_blocks * k_block)
  key_is_real = jnp.arange(k_blocks * k_block) < s_len

  def attend_query_block(qi):
    q = jax.lax.dynamic_slice_in_dim(query, qi * q_block, q_block, axis=1)  # [B, q, H, K]

    @jax.checkpoint
    def step(carry, ki):
      m, total, acc = carry  # running max, running sum: [B, H, q]; acc: [B, q, H, V]
      k = jax.lax.dynamic_slice_in_dim(key, ki * k_block, k_block, axis=1)
      v = jax.lax.dynamic_slice_in_dim(value, ki * k_block, k_block, axis=1)
      real = jax.lax.dynamic_slice_in_dim(key_is_real, ki * k_block, k_block)
      logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
      # Masked keys get the reference's large negative logit; padding keys an even smaller one,
      # so that a fully masked row averages the real keys exactly as the reference does.
      if block_mask is not None:
        logits = jnp.where(block_mask(qi * q_block, q_block, ki * k_block, k_block), logits,
                           _MASKED_LOGIT)
      logits = jnp.where(real, logits, 2 * _MASKED_LOGIT)
      m_new = jnp.maximum(m, logits.max(axis=-1))
      p = jnp.exp(logits - m_new[..., None])
      correction = jnp.exp(m - m_new)
      total = total * correction + p.sum(axis=-1)
      acc = acc * jnp.transpose(correction, (0, 2, 1))[..., None] + jnp.einsum(
          "bhqs,bshv->bqhv", p, v.astype(jnp.float32))
      return (m_new, total, acc), None

    initial = (jnp.full((batch, heads, q_block), 4 * _MASKED_LOGIT, jnp.float32),
               jnp.zeros((batch, heads, q_block), jnp.float32),
               jnp.zeros((batch, q_block, heads, d_v), jnp.float32))
    (_, total, acc), _ = jax.lax.scan(step, initial, jnp.arange(k_blocks))
    return acc / jnp.transpose(total, (0, 2, 1))[..., None]

  blocks = jax.lax.map(attend_query_block, jnp.arange(q_blocks))  # [nq, B, q, H, V]
  output = jnp.moveaxis(blocks, 0, 1).reshape(batch, q_blocks * q_block, heads, d_v)
  return output[:, :q_len].astype(value.dtype)


BlockMask = Callable[[jnp.ndarray, int, jnp.ndarray, int], jnp.ndarray]


def _block_masks(mask: Mask | jnp.ndarray | None, q_len: int, s_len: int, q_padded: int,
                 s_padded: int) -> BlockMask | None:
  """(query start, query block, key start, key block) -> that block's `[B, 1, q, s]` mask."""
  if isinstance(mask, Mask) and mask.query_segments is not None:
    query_segments = jnp.pad(mask.query_segments, [(0, 0), (0, q_padded - q_len)])
    key_segments = jnp.pad(mask.key_segments, [(0, 0), (0, s_padded - s_len)])

    def from_segments(q_start, q_size, k_start, k_size):
      return masks.allowed(jax.lax.dynamic_slice_in_dim(query_segments, q_start, q_size, axis=1),
                           jax.lax.dynamic_slice_in_dim(key_segments, k_start, k_size, axis=1),
                           mask.causal, q_start + jnp.arange(q_size), k_start + jnp.arange(k_size))
    return from_segments
  dense = masks.dense_of(mask)
  if dense is None:
    return None
  dense = jnp.broadcast_to(dense, (dense.shape[0], dense.shape[1], q_len, s_len))
  dense = jnp.pad(dense, [(0, 0), (0, 0), (0, q_padded - q_len), (0, s_padded - s_len)])

  def sliced(q_start, q_size, k_start, k_size):
    rows = jax.lax.dynamic_slice_in_dim(dense, q_start, q_size, axis=2)
    return jax.lax.dynamic_slice_in_dim(rows, k_start, k_size, axis=3)
  return sliced


def _projection(config: ModelConfig, per_head_size: int, name: str) -> nn.DenseGeneral:
  """A `[B, L, D] -> [B, L, H, per_head_size]` projection (W^Q, W^K or W^V for all heads)."""
  return nn.DenseGeneral(
      features=(config.num_heads, per_head_size),
      dtype=config.compute_dtype,
      param_dtype=config.weight_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                               ("embed", "heads", "kv")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "kv")),
      name=name)


class MultiHeadAttention(nn.Module):
  """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W^Q_i, K W^K_i, V W^V_i).

  With `decode=True` it keeps a key/value cache in the `cache` collection: self-attention appends
  one step's keys/values per call; encoder-decoder attention (`cross=True`) projects the encoder
  output once, on the call that creates the cache, and reuses it on every later step.
  """

  config: ModelConfig
  deterministic: bool = True
  decode: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray | None,
               mask: Mask | jnp.ndarray | None) -> jnp.ndarray:
    """`[B, Q, D]` queries attend over `[B, S, D]` keys/values; returns `[B, Q, D]`.

    `mask` is a `masks.Mask` or its boolean `[B, 1, Q, S]` form (True: may attend).
    """
    config = self.config
    query = _projection(config, config.d_k, "query")(inputs_q)  # [B, Q, H, K]
    key_projection = _projection(config, config.d_k, "key")
    value_projection = _projection(config, config.d_v, "value")
    if self.decode and self.cross:
      key = self.variable("cache", "cross_key", key_projection, inputs_kv).value
      value = self.variable("cache", "cross_value", value_projection, inputs_kv).value
    else:
      key = key_projection(inputs_kv)  # [B, S, H, K]
      value = value_projection(inputs_kv)  # [B, S, H, V]
      if self.decode:
        key, value, mask = self._append_to_cache(key, value, mask)

    dropout_rng = None
    if not self.deterministic and config.attention_dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    dense = masks.dense_of(mask)
    if config.attention_kernel == "cudnn":
      structured = mask if isinstance(mask, Mask) or mask is None else Mask(mask)
      attended = cudnn_attention(query, key, value, structured)
    elif config.attention_kernel == "jax":
      attended = fused_attention(query, key, value, dense)
    elif config.attention_kernel == "blockwise":
      attended = blockwise_attention(query, key, value, mask, config.attention_block_size)
    else:
      probs_dtype = (jnp.float32 if config.attention_probs_dtype == "float32" else
                     config.compute_dtype)
      attended, weights = reference_attention(query, key, value, dense, dropout_rng,
                                              config.attention_dropout_rate, probs_dtype)
      self.sow("intermediates", "attention_weights", weights)
    attended = nn.with_logical_constraint(attended, ("batch", "length", "heads", "kv"))

    output = nn.DenseGeneral(  # W^O applied to the concatenated heads
        features=config.d_model,
        axis=(-2, -1),
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                 ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name="out")(attended)
    return output

  def _append_to_cache(self, key: jnp.ndarray, value: jnp.ndarray, mask: Mask | jnp.ndarray | None
                       ) -> tuple[jnp.ndarray, jnp.ndarray, Mask | None]:
    """Writes this step's keys/values at the cache index; returns the whole cache and its mask.

    The call that creates the cache (inputs of the full decode length) only allocates it.
    """
    is_initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
      return key, value, mask
    step_length = key.shape[1]
    index = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
    cache_index.value = index + step_length
    # Step queries at positions index..index+step_length-1 see cached keys at positions up to
    # their own.
    query_positions = index + jnp.arange(step_length)
    key_positions = jnp.arange(cached_key.value.shape[1])
    filled = (key_positions[None, :] <= query_positions[:, None])[None, None]  # [1, 1, Q, S]
    dense = masks.dense_of(mask)
    dense = filled if dense is None else dense & filled
    if step_length != 1:  # several steps at once: only the dense form says what each may see
      return cached_key.value, cached_value.value, Mask(dense)
    batch = jnp.full((key.shape[0],), 1, jnp.int32)
    return cached_key.value, cached_value.value, Mask(dense, batch, batch * (index + 1))
