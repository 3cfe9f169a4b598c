"""Padding, causal and segment masks."""

import jax.numpy as jnp
import numpy as np

from transformer import masks


def test_causal_mask_is_lower_triangular():
  np.testing.assert_array_equal(masks.causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))


def test_padding_mask_from_pad_ids():
  tokens = jnp.array([[5, 6, 0, 0]])
  mask = masks.encoder_self_attention_mask(tokens, None, pad_id=0)[0, 0]
  expected = np.zeros((4, 4), bool)
  expected[:2, :2] = True
  np.testing.assert_array_equal(mask, expected)


def test_segment_mask_blocks_other_sentences():
  segments = jnp.array([[1, 1, 2, 2, 2, 0]])
  tokens = jnp.array([[7, 8, 9, 9, 9, 0]])
  mask = np.asarray(masks.decoder_self_attention_mask(tokens, segments, pad_id=0)[0, 0])
  for i in range(6):
    for j in range(6):
      allowed = segments[0, i] == segments[0, j] and segments[0, i] > 0 and j <= i
      assert mask[i, j] == allowed, (i, j)


def test_encoder_decoder_mask_with_segments():
  mask = masks.encoder_decoder_mask(jnp.array([[3, 4, 0]]), jnp.array([[1, 2, 0]]),
                                    jnp.array([[5, 5, 6, 0]]), jnp.array([[1, 1, 2, 0]]),
                                    pad_id=0)[0, 0]
  expected = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask, expected)
