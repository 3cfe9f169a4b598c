"""The cuDNN kernel's masks, checked on CPU through jax's own XLA implementation of the same call.

cuDNN runs only on an NVIDIA GPU (`benchmarks/gpu_check.py` compares it with the reference there).
Here `jax.nn.dot_product_attention(..., implementation="cudnn")` is answered by the same function
with `implementation="xla"`, which honours `is_causal`, the sequence lengths and the mask as
documented, and compared with the `jax` kernel (the same XLA function given the dense boolean
mask): the arithmetic is the same, only the form of the mask differs, so the results agree to
float rounding. These tests check what the model passes to cuDNN: lengths and causality for
padded rows, the mask for packed ones, the cache's fill during decoding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import config as configs

from transformer.model import Transformer

from helpers import init_params, random_tokens
from test_model import incremental_logits

TOLERANCE = 1e-5  # the same bfloat16 arithmetic; a wrong mask moves logits by O(0.1-1)


@pytest.fixture
def calls(monkeypatch):
  """Routes cuDNN attention to jax's XLA implementation; records which form of mask it got."""
  real = jax.nn.dot_product_attention
  seen = []

  def as_xla(query, key, value, bias=None, mask=None, *, implementation=None, **kwargs):
    if implementation != "cudnn":  # the `jax` kernel of the reference model
      return real(query, key, value, bias, mask, implementation=implementation, **kwargs)
    assert query.dtype in (jnp.bfloat16, jnp.float16)
    seen.append("lengths" if kwargs.get("query_seq_lengths") is not None else
                "mask" if mask is not None else "none")
    return real(query, key, value, bias, mask, implementation="xla", **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", as_xla)
  return seen


def forward(config, params, inputs, targets, **kwargs):
  """Teacher-forced logits, traced afresh (the fake must be in place when it is traced)."""
  return jax.jit(lambda p: Transformer(config).apply({"params": p}, inputs, targets, **kwargs))(
      params)


def bf16(kernel):
  return configs.tiny(dtype="bfloat16", attention_kernel=kernel)


def padded_batch(config):
  inputs = random_tokens(0, (2, 9), config.vocab_size).at[1, 6:].set(0)
  targets = random_tokens(1, (2, 8), config.vocab_size).at[1, 5:].set(0)
  return inputs, targets


def test_padded_rows_pass_lengths_and_match_the_reference(calls):
  _, params = init_params(bf16("jax"))
  inputs, targets = padded_batch(bf16("jax"))
  real = np.asarray(targets > 0)
  reference = np.asarray(forward(bf16("jax"), params, inputs, targets), np.float32)[real]
  cudnn = np.asarray(forward(bf16("cudnn"), params, inputs, targets), np.float32)[real]
  np.testing.assert_allclose(cudnn, reference, atol=TOLERANCE)
  assert set(calls) == {"lengths"}


def test_packed_rows_pass_the_segment_mask(calls):
  _, params = init_params(bf16("jax"))
  inputs = random_tokens(2, (1, 8), 64).at[:, 7:].set(0)
  targets = random_tokens(3, (1, 8), 64).at[:, 6:].set(0)
  packed = dict(inputs_segmentation=jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]]),
                targets_segmentation=jnp.array([[1, 1, 2, 2, 2, 2, 0, 0]]),
                inputs_positions=jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]]),
                targets_positions=jnp.array([[0, 1, 0, 1, 2, 3, 0, 0]]))
  real = np.asarray(packed["targets_segmentation"] > 0)
  reference = np.asarray(forward(bf16("jax"), params, inputs, targets, **packed), np.float32)
  cudnn = np.asarray(forward(bf16("cudnn"), params, inputs, targets, **packed), np.float32)
  np.testing.assert_allclose(cudnn[real], reference[real], atol=TOLERANCE)
  assert set(calls) == {"mask"}


def test_cached_decoding_passes_the_cache_fill_as_lengths(calls):
  """Step by step with the cache, cuDNN sees the filled positions (and the source) as lengths."""
  _, params = init_params(bf16("jax"))
  inputs, targets = padded_batch(bf16("jax"))
  reference = np.asarray(incremental_logits(bf16("jax"), params, inputs, targets), np.float32)
  calls.clear()
  cudnn = np.asarray(incremental_logits(bf16("cudnn"), params, inputs, targets), np.float32)
  np.testing.assert_allclose(cudnn, reference, atol=TOLERANCE)
  assert set(calls) == {"lengths", "none"}  # "none": init_cache's discarded allocation pass


def test_a_mask_cudnn_ignored_would_be_caught(monkeypatch):
  """The comparison can fail: dropping the lengths (attending to padding) moves the logits."""
  real = jax.nn.dot_product_attention

  def ignoring_lengths(query, key, value, bias=None, mask=None, *, implementation=None, **kw):
    if implementation == "cudnn":
      kw.pop("query_seq_lengths", None), kw.pop("key_value_seq_lengths", None)
    return real(query, key, value, bias, mask, implementation="xla", **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", ignoring_lengths)
  _, params = init_params(bf16("jax"))
  inputs, targets = padded_batch(bf16("jax"))
  real_positions = np.asarray(targets > 0)
  reference = np.asarray(forward(bf16("jax"), params, inputs, targets), np.float32)
  wrong = np.asarray(forward(bf16("cudnn"), params, inputs, targets), np.float32)
  assert np.abs(wrong - reference)[real_positions].max() > 1e-2


def test_cudnn_config_errors():
  with pytest.raises(ValueError, match="attention_kernel='cudnn' computes in bfloat16 or float16"):
    configs.tiny(attention_kernel="cudnn")
  with pytest.raises(ValueError, match="d_k a multiple of 8 and at most 128"):
    configs.tiny(attention_kernel="cudnn", dtype="bfloat16", d_model=36, num_heads=4)
  with pytest.raises(ValueError, match=r"'cudnn' does not run on cpu; kernels there: xla, jax, "
                                       r"blockwise"):
    configs.check_kernel_platform(bf16("cudnn"), "cpu")
  configs.check_kernel_platform(bf16("cudnn"), "gpu")
