"""Label-smoothed cross entropy and accuracy as (sum, weight) pairs.

Sums aggregate exactly over padding, packed rows, devices and evaluation batches; divide at the
end. Glossary: B batch, L length, N vocabulary size.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp


def log_softmax(logits: jnp.ndarray) -> jnp.ndarray:
  """Float32 log-probabilities of float32 or bfloat16 logits (the log-sum-exp in float32)."""
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def smoothing_entropy(vocab_size: int, label_smoothing: float) -> float:
  """Entropy of the smoothed target distribution: the loss of a perfect prediction."""
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  return -(confidence * math.log(confidence) +
           (vocab_size - 1) * low_confidence * math.log(low_confidence + 1e-20))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _smoothed_negative_log_likelihood(logits: jnp.ndarray, targets: jnp.ndarray,
                                      label_smoothing: float) -> jnp.ndarray:
  return _smoothed_nll_forward(logits, targets, label_smoothing)[0]


def _smoothed_nll_forward(logits, targets, label_smoothing):
  # -sum_n q_n log p_n with q = low + (confidence - low) [n = target] and log p = x - lse:
  # = lse - (confidence - low) x_target - low sum_n x_n (sum_n q_n = 1). Three reductions of
  # the logits as stored; no [B, L, N] float32 log-probabilities.
  vocab_size = logits.shape[-1]
  low = label_smoothing / (vocab_size - 1)
  # Each reduction converts the logits itself: a shared float32 copy would be written whole.
  maximum = jax.lax.stop_gradient(jnp.max(logits, axis=-1)).astype(jnp.float32)
  log_sum_exp = maximum + jnp.log(
      jnp.sum(jnp.exp(logits.astype(jnp.float32) - maximum[..., None]), axis=-1))
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = (log_sum_exp - (1.0 - label_smoothing - low) * target_logits.astype(jnp.float32)
         - low * jnp.sum(logits, axis=-1, dtype=jnp.float32))
  return nll, (logits, targets, log_sum_exp)


def _smoothed_nll_backward(label_smoothing, residuals, cotangent):
  # d nll / d x_n = p_n - q_n: one elementwise pass, written in the logits' dtype.
  logits, targets, log_sum_exp = residuals
  vocab_size = logits.shape[-1]
  low = label_smoothing / (vocab_size - 1)
  probs = jnp.exp(logits.astype(jnp.float32) - log_sum_exp[..., None])
  is_target = jnp.arange(vocab_size, dtype=targets.dtype) == targets[..., None]
  soft_targets = jnp.where(is_target, 1.0 - label_smoothing, low)
  gradient = cotangent[..., None] * (probs - soft_targets)
  return gradient.astype(logits.dtype), None


_smoothed_negative_log_likelihood.defvjp(_smoothed_nll_forward, _smoothed_nll_backward)


def label_smoothed_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray,
                                 weights: jnp.ndarray, label_smoothing: float
                                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Sum of weighted cross entropy against smoothed targets (Sec. 5.4), and the weight sum.

  The true token gets 1 - label_smoothing and every other token label_smoothing / (N - 1). The
  entropy of that distribution is subtracted, so a perfect prediction has loss 0.

  Fused: the forward pass reads the logits (float32 or bfloat16) for a float32 log-sum-exp,
  the target's logit and the logits' sum; the backward pass writes the gradient
  `softmax - smoothed targets` in one pass, in the logits' dtype. Neither materializes
  `[B, L, N]` float32 log-probabilities, which autodiff through `log_softmax` does.

  Args:
    logits: `[B, L, N]` (float32 or bfloat16); targets: `[B, L]` ids; weights: `[B, L]` (0 for
      padding).
  """
  nll = _smoothed_negative_log_likelihood(logits, targets, label_smoothing)
  loss = nll - smoothing_entropy(logits.shape[-1], label_smoothing)
  return jnp.sum(loss * weights), jnp.sum(weights)


def cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Plain (unsmoothed) negative log-likelihood sum, for perplexity, and the weight sum."""
  log_probs = log_softmax(logits)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * weights), jnp.sum(weights)


def accuracy(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray
             ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Number of weighted positions where the argmax is the target, and the weight sum.

  Compared as "the target's logit is the maximum" rather than through `argmax`: the maximum is
  the reduction log-softmax computes anyway (XLA shares it), while an argmax is a second,
  slower (value, index) pass over `[B, L, N]`. Exact ties count as correct.
  """
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  correct = (target_logits >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)


def loss_and_accuracy(features: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray,
                      project: Callable[[jnp.ndarray], jnp.ndarray], label_smoothing: float,
                      chunks: int = 1) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Smoothed cross-entropy sum, correct-token count and weight sum from decoder features.

  `project` maps `[B, l, D]` features to `[B, l, N]` logits. With `chunks > 1` the target
  positions are projected `L / chunks` at a time, each chunk recomputed in the backward pass
  (`jax.checkpoint`), so the `[B, L, N]` logits and their gradient never exist whole: the
  vocabulary projection's memory falls by the factor `chunks`, at the price of one more
  projection matmul in the backward pass. The chunks are unrolled, not a loop: XLA's TPU cost
  model counts a loop body once, and a few chunks compile fast. The sums equal the unchunked
  ones up to float summation order.

  Args:
    features: `[B, L, D]`; targets: `[B, L]` ids; weights: `[B, L]` (0 for padding).
  """
  length = targets.shape[1]
  if length % chunks:
    raise ValueError(f"config.train.loss_chunks={chunks} does not divide the target length "
                     f"{length}")

  def chunk_sums(chunk_features, chunk_targets, chunk_weights):
    logits = project(chunk_features)
    loss_sum, _ = label_smoothed_cross_entropy(logits, chunk_targets, chunk_weights,
                                               label_smoothing)
    correct, _ = accuracy(jax.lax.stop_gradient(logits), chunk_targets, chunk_weights)
    return loss_sum, correct

  if chunks == 1:
    loss_sum, correct = chunk_sums(features, targets, weights)
    return loss_sum, correct, jnp.sum(weights)
  recomputed = jax.checkpoint(chunk_sums)
  size = length // chunks
  sums = [recomputed(features[:, i:i + size], targets[:, i:i + size], weights[:, i:i + size])
          for i in range(0, length, size)]
  return sum(s[0] for s in sums), sum(s[1] for s in sums), jnp.sum(weights)
