"""Attention masks as small pure functions.

A mask is a boolean array broadcastable to `[batch, heads, query_length, key_length]`; True means
"may attend". Glossary: B batch, Q query length, K key length.
"""

from __future__ import annotations

import jax.numpy as jnp


def padding_mask(query_valid: jnp.ndarray, key_valid: jnp.ndarray) -> jnp.ndarray:
  """Mask from per-token validity: `[B, Q]`, `[B, K]` -> `[B, 1, Q, K]`."""
  return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def causal_mask(length: int) -> jnp.ndarray:
  """Position i may attend to positions <= i (Sec. 3.2.3): `[1, 1, L, L]`."""
  positions = jnp.arange(length)
  return (positions[:, None] >= positions[None, :])[None, None]


def segment_mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray) -> jnp.ndarray:
  """Packed rows: tokens attend only within their own sentence. `[B, Q]`, `[B, K]` -> `[B,1,Q,K]`."""
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


def encoder_self_attention_mask(tokens: jnp.ndarray, segments: jnp.ndarray | None,
                                pad_id: int) -> jnp.ndarray:
  """Encoder self-attention: padding (and segment) mask, `[B, 1, L, L]`."""
  valid = token_validity(tokens, segments, pad_id)
  same_segment = segment_mask(segments, segments) if segments is not None else None
  return combine(padding_mask(valid, valid), same_segment)


def decoder_self_attention_mask(targets: jnp.ndarray, segments: jnp.ndarray | None,
                                pad_id: int) -> jnp.ndarray:
  """Decoder self-attention: padding, causal and segment masks, `[B, 1, L, L]`."""
  valid = token_validity(targets, segments, pad_id)
  same_segment = segment_mask(segments, segments) if segments is not None else None
  return combine(padding_mask(valid, valid), causal_mask(targets.shape[1]), same_segment)


def encoder_decoder_mask(targets: jnp.ndarray, target_segments: jnp.ndarray | None,
                         inputs: jnp.ndarray, input_segments: jnp.ndarray | None,
                         pad_id: int) -> jnp.ndarray:
  """Encoder-decoder attention: target queries over source keys, `[B, 1, Lt, Ls]`."""
  same_segment = None
  if target_segments is not None and input_segments is not None:
    same_segment = segment_mask(target_segments, input_segments)
  return combine(
      padding_mask(token_validity(targets, target_segments, pad_id),
                   token_validity(inputs, input_segments, pad_id)),
      same_segment)
