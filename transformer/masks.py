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

  A query attends to the keys of its own sentence (the same non-zero segment id; a packed row
  holds several), and under `causal` only to those at positions up to its own (Sec. 3.2.3).
  Positions (`[Q]`, `[K]`) place a block of queries/keys within the sequence.
  """
  same = query_segments[:, None, :, None] == key_segments[:, None, None, :]
  result = same & (query_segments > 0)[:, None, :, None]
  if causal:
    result = result & (query_positions[:, None] >= key_positions[None, :])[None, None]
  return result


def padding_mask(query_valid: jnp.ndarray, key_valid: jnp.ndarray) -> jnp.ndarray:
  """Mask from per-token validity: `[B, Q]`, `[B, K]` -> `[B, 1, Q, K]`."""
  return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def causal_mask(length: int) -> jnp.ndarray:
  """Position i may attend to positions <= i (Sec. 3.2.3): `[1, 1, L, L]`."""
  positions = jnp.arange(length)
  return (positions[:, None] >= positions[None, :])[None, None]


def segment_mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray) -> jnp.ndarray:
  """Packed rows: tokens attend only within their own sentence.

  `[B, Q]`, `[B, K]` segment ids -> `[B, 1, Q, K]`.
  """
  return query_segments[:, None, :, None] == key_segments[:, None, None, :]


def combine(*masks: jnp.ndarray | None) -> jnp.ndarray | None:
  """Logical AND of the masks that are not None (None if all are)."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  combined = present[0]
  for mask in present[1:]:
    combined = combined & mask
  return combined


def token_validity(tokens: jnp.ndarray, segments: jnp.ndarray | None, pad_id: int) -> jnp.ndarray:
  """Real (non-pad) tokens: from segment ids when the batch is packed, else from the pad id."""
  if segments is not None:
    return segments > 0
  return tokens != pad_id


def _mask(dense: jnp.ndarray, query_valid: jnp.ndarray, key_valid: jnp.ndarray,
          query_segments: jnp.ndarray | None, key_segments: jnp.ndarray | None,
          causal: bool = False) -> Mask:
  """A right-padded row is one sentence: segment 1 on its tokens, 0 on its padding."""
  if query_segments is not None and key_segments is not None:  # packed rows
    return Mask(dense, causal=causal, query_segments=query_segments, key_segments=key_segments)
  return Mask(dense, lengths(query_valid), lengths(key_valid), causal,
              query_valid.astype(jnp.int32), key_valid.astype(jnp.int32))


def encoder_self_attention_mask(tokens: jnp.ndarray, segments: jnp.ndarray | None,
                                pad_id: int) -> Mask:
  """Encoder self-attention: padding (and segment) mask, `[B, 1, L, L]`."""
  valid = token_validity(tokens, segments, pad_id)
  same_segment = segment_mask(segments, segments) if segments is not None else None
  dense = combine(padding_mask(valid, valid), same_segment)
  return _mask(dense, valid, valid, segments, segments)


def decoder_self_attention_mask(targets: jnp.ndarray, segments: jnp.ndarray | None,
                                pad_id: int) -> Mask:
  """Decoder self-attention: padding, causal and segment masks, `[B, 1, L, L]`."""
  valid = token_validity(targets, segments, pad_id)
  same_segment = segment_mask(segments, segments) if segments is not None else None
  dense = combine(padding_mask(valid, valid), causal_mask(targets.shape[1]), same_segment)
  return _mask(dense, valid, valid, segments, segments, causal=True)


def encoder_decoder_mask(targets: jnp.ndarray, target_segments: jnp.ndarray | None,
                         inputs: jnp.ndarray, input_segments: jnp.ndarray | None,
                         pad_id: int) -> Mask:
  """Encoder-decoder attention: target queries over source keys, `[B, 1, Lt, Ls]`."""
  packed = target_segments is not None and input_segments is not None
  same_segment = segment_mask(target_segments, input_segments) if packed else None
  target_valid = token_validity(targets, target_segments, pad_id)
  source_valid = token_validity(inputs, input_segments, pad_id)
  dense = combine(padding_mask(target_valid, source_valid), same_segment)
  return _mask(dense, target_valid, source_valid, target_segments, input_segments)


def decode_step_cross_mask(step_targets: jnp.ndarray, inputs: jnp.ndarray, pad_id: int) -> Mask:
  """Encoder-decoder attention of one incremental decoding step over the (right-padded) source."""
  step_valid = jnp.ones(step_targets.shape, bool)
  source_valid = token_validity(inputs, None, pad_id)
  return _mask(padding_mask(step_valid, source_valid), step_valid, source_valid, None, None)
