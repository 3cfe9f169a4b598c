"""Padding, causal and segment masks."""

import jax.numpy as jnp
import numpy as np
import pytest

from transformer import masks


def _allowed_by_loops(query_segments, key_segments, causal):
  """May-attend written from the definition: the same sentence, not padding, not the future."""
  out = np.zeros((len(query_segments), 1, query_segments.shape[1], key_segments.shape[1]), bool)
  for b in range(len(query_segments)):
    for i, q in enumerate(query_segments[b]):
      for j, k in enumerate(key_segments[b]):
        out[b, 0, i, j] = q == k and q > 0 and (j <= i or not causal)
  return out


@pytest.mark.parametrize("causal", [False, True])
def test_a_block_of_the_mask_is_built_from_its_slice_of_segment_ids(causal):
  query_segments = np.array([[1, 1, 2, 2, 2, 3, 0], [1, 1, 1, 1, 1, 0, 0]])
  key_segments = np.array([[1, 2, 2, 2, 3, 3, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]])
  whole = _allowed_by_loops(query_segments, key_segments, causal)
  for q0, q1, k0, k1 in [(0, 7, 0, 8), (2, 5, 1, 4), (4, 7, 5, 8), (0, 3, 3, 6)]:
    block = masks.allowed(jnp.asarray(query_segments[:, q0:q1]),
                          jnp.asarray(key_segments[:, k0:k1]), causal,
                          jnp.arange(q0, q1), jnp.arange(k0, k1))
    np.testing.assert_array_equal(block, whole[..., q0:q1, k0:k1], err_msg=str((q0, q1, k0, k1)))


def test_padding_mask_from_pad_ids():
  tokens = jnp.array([[5, 6, 0, 0]])
  mask = masks.encoder_self_attention_mask(tokens, None, pad_id=0).dense[0, 0]
  expected = np.zeros((4, 4), bool)
  expected[:2, :2] = True
  np.testing.assert_array_equal(mask, expected)


def test_segment_mask_blocks_other_sentences():
  segments = jnp.array([[1, 1, 2, 2, 2, 0]])
  tokens = jnp.array([[7, 8, 9, 9, 9, 0]])
  mask = np.asarray(masks.decoder_self_attention_mask(tokens, segments, pad_id=0).dense[0, 0])
  for i in range(6):
    for j in range(6):
      allowed = segments[0, i] == segments[0, j] and segments[0, i] > 0 and j <= i
      assert mask[i, j] == allowed, (i, j)


def test_encoder_decoder_mask_with_segments():
  mask = masks.encoder_decoder_mask(jnp.array([[3, 4, 0]]), jnp.array([[1, 2, 0]]),
                                    jnp.array([[5, 5, 6, 0]]), jnp.array([[1, 1, 2, 0]]),
                                    pad_id=0).dense[0, 0]
  expected = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask, expected)


def _dense_from_lengths(query_lengths, key_lengths, causal, q_len, k_len):
  """The boolean mask that right-padded lengths (and causality) describe, written with loops."""
  out = np.zeros((len(query_lengths), 1, q_len, k_len), bool)
  for b, (lq, lk) in enumerate(zip(query_lengths, key_lengths)):
    for i in range(lq):
      for j in range(lk):
        out[b, 0, i, j] = (j <= i) if causal else True
  return out


def test_unpacked_masks_carry_lengths_that_describe_the_same_mask():
  """What cuDNN receives (lengths, causal) allows exactly what the dense mask allows."""
  targets = jnp.array([[3, 4, 5, 0], [6, 0, 0, 0]])
  inputs = jnp.array([[7, 7, 0], [8, 8, 8]])
  built = {
      "encoder": (masks.encoder_self_attention_mask(inputs, None, 0), 3, 3),
      "decoder": (masks.decoder_self_attention_mask(targets, None, 0), 4, 4),
      "cross": (masks.encoder_decoder_mask(targets, None, inputs, None, 0), 4, 3),
      "decode step": (masks.decode_step_cross_mask(targets[:, :1], inputs, 0), 1, 3),
  }
  for name, (mask, q_len, k_len) in built.items():
    assert mask.query_lengths is not None, name
    expected = _dense_from_lengths(np.asarray(mask.query_lengths), np.asarray(mask.key_lengths),
                                   mask.causal, q_len, k_len)
    dense = np.broadcast_to(np.asarray(mask.dense), expected.shape)
    np.testing.assert_array_equal(dense, expected, err_msg=name)
  assert built["decoder"][0].causal and not built["cross"][0].causal
  np.testing.assert_array_equal(built["cross"][0].key_lengths, [2, 3])


def test_packed_masks_have_no_lengths():
  segments = jnp.array([[1, 1, 2, 0]])
  mask = masks.decoder_self_attention_mask(jnp.array([[3, 4, 5, 0]]), segments, 0)
  assert mask.query_lengths is None and mask.key_lengths is None and mask.causal


def test_every_mask_carries_segment_ids_that_describe_it():
  """What the blockwise kernel receives (segment ids, causal) allows exactly what `dense` does."""
  targets, target_segments = jnp.array([[3, 4, 5, 6], [6, 7, 0, 0]]), jnp.array([[1, 1, 2, 0],
                                                                               [1, 2, 0, 0]])
  inputs, input_segments = jnp.array([[7, 7, 8, 0], [8, 9, 9, 9]]), jnp.array([[1, 1, 2, 0],
                                                                             [1, 2, 2, 2]])
  built = {
      "encoder": masks.encoder_self_attention_mask(inputs, None, 0),
      "encoder packed": masks.encoder_self_attention_mask(inputs, input_segments, 0),
      "decoder": masks.decoder_self_attention_mask(targets, None, 0),
      "decoder packed": masks.decoder_self_attention_mask(targets, target_segments, 0),
      "cross": masks.encoder_decoder_mask(targets, None, inputs, None, 0),
      "cross packed": masks.encoder_decoder_mask(targets, target_segments, inputs,
                                                 input_segments, 0),
      "decode step": masks.decode_step_cross_mask(targets[:, :1], inputs, 0),
  }
  for name, mask in built.items():
    expected = _allowed_by_loops(np.asarray(mask.query_segments), np.asarray(mask.key_segments),
                                 mask.causal)
    np.testing.assert_array_equal(np.broadcast_to(mask.dense, expected.shape), expected,
                                  err_msg=name)
  np.testing.assert_array_equal(built["cross packed"].key_segments, input_segments)
  np.testing.assert_array_equal(built["cross"].key_segments, [[1, 1, 1, 0], [1, 1, 1, 1]])
