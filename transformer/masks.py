"""Attention masks as small pure functions.

A mask is a boolean array broadcastable to `[batch, heads, query_length, key_length]`; True means
"may attend". Glossary: B batch, Q query length, K key length.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class Mask:
  """One attention's mask in the forms the kernels take.

  `dense` is the boolean `[B, 1, Q, K]` mask every kernel can use. `query_segments` and
  `key_segments` (`[B, Q]`, `[B, K]` int32; 0 is padding) with `causal` describe the same mask
  without materializing it: the blockwise kernel builds each block's mask from them. Rows that
  are not packed are right-padded, so the same mask is also `query_lengths`/`key_lengths` (`[B]`
  int32) plus `causal`: the form cuDNN's fused kernel takes. Packed rows (segment ids) have no
  lengths. Unused forms cost nothing under `jit` (dead code).
  """

  dense: jnp.ndarray | None
  query_lengths: jnp.ndarray | None = None
  key_lengths: jnp.ndarray | None = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  query_segments: jnp.ndarray | None = None
  key_segments: jnp.ndarray | None = None


def dense_of(mask: Mask | jnp.ndarray | None) -> jnp.ndarray | None:
  """The boolean `[B, 1, Q, K]` form of a mask given either way."""
  return mask.dense if isinstance(mask, Mask) else mask


def lengths(valid: jnp.ndarray) -> jnp.ndarray:
  """Tokens per right-padded row: `[B, L]` validity -> `[B]` int32."""
  return valid.sum(axis=-1, dtype=jnp.int32)


def allowed(query_segments: jnp.ndarray, key_segments: jnp.ndarray, causal: bool,
            query_positions: jnp.ndarray, key_positions: jnp.ndarray) -> jnp.ndarray:
  """May-attend from segment ids: `[B, Q]`, `[B, K]` (0: padding) -> `[B, 1, Q, K]`.

  A query attends to the keys of its own sentence (the same non-zero segment id; Sec. 5.1's
  batching packs several per row), and under `causal` only to those at positions up to its own
  (Sec. 3.2.3). Positions (`[Q]`, `[K]`) place a block of queries/keys within the sequence.
  """
  same = query_segments[:, None, :, None] == key_segments[:, None, None, :]
  result = same & (query_segments > 0)[:, None, :, None]
  if causal:
    result = result & (query_positions[:, None] >= key_positions[None, :])[None, None]
  return result


def token_validity(tokens: jnp.ndarray, segments: jnp.ndarray | None, pad_id: int) -> jnp.ndarray:
  """Real (non-pad) tokens: from segment ids when the batch is packed, else from the pad id."""
  if segments is not None:
    return segments > 0
  return tokens != pad_id


def _mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray, packed: bool,
          causal: bool = False) -> Mask:
  dense = allowed(query_segments, key_segments, causal, jnp.arange(query_segments.shape[1]),
                  jnp.arange(key_segments.shape[1]))
  if packed:
    return Mask(dense, causal=causal, query_segments=query_segments, key_segments=key_segments)
  return Mask(dense, lengths(query_segments > 0), lengths(key_segments > 0), causal,
              query_segments, key_segments)


def _segments(tokens: jnp.ndarray, segments: jnp.ndarray | None, pad_id: int) -> jnp.ndarray:
  """Segment ids of packed rows; 1 on the real tokens of a right-padded row, 0 on its padding."""
  if segments is not None:
    return segments.astype(jnp.int32)
  return (tokens != pad_id).astype(jnp.int32)


def encoder_self_attention_mask(tokens: jnp.ndarray, segments: jnp.ndarray | None,
                                pad_id: int) -> Mask:
  """Encoder self-attention: padding (and segment) mask, `[B, 1, L, L]`."""
  ids = _segments(tokens, segments, pad_id)
  return _mask(ids, ids, segments is not None)


def decoder_self_attention_mask(targets: jnp.ndarray, segments: jnp.ndarray | None,
                                pad_id: int) -> Mask:
  """Decoder self-attention: padding, causal and segment masks, `[B, 1, L, L]`."""
  ids = _segments(targets, segments, pad_id)
  return _mask(ids, ids, segments is not None, causal=True)


def encoder_decoder_mask(targets: jnp.ndarray, target_segments: jnp.ndarray | None,
                         inputs: jnp.ndarray, input_segments: jnp.ndarray | None,
                         pad_id: int) -> Mask:
  """Encoder-decoder attention: target queries over source keys, `[B, 1, Lt, Ls]`."""
  packed = target_segments is not None and input_segments is not None
  if packed:
    return _mask(_segments(targets, target_segments, pad_id),
                 _segments(inputs, input_segments, pad_id), packed=True)
  # Padding only: validity from segment ids where a side has them, else from the pad id.
  return _mask(token_validity(targets, target_segments, pad_id).astype(jnp.int32),
               token_validity(inputs, input_segments, pad_id).astype(jnp.int32), packed=False)


def decode_step_cross_mask(step_targets: jnp.ndarray, inputs: jnp.ndarray, pad_id: int) -> Mask:
  """Encoder-decoder attention of one incremental decoding step over the (right-padded) source."""
  step = jnp.ones(step_targets.shape, jnp.int32)
  return _mask(step, _segments(inputs, None, pad_id), packed=False)
