"""Label-smoothed cross entropy and accuracy as (sum, weight) pairs.

Sums aggregate exactly over padding, packed rows, devices and evaluation batches; divide at the
end. Glossary: B batch, L length, N vocabulary size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def label_smoothed_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray,
                                 weights: jnp.ndarray, label_smoothing: float
                                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Sum of weighted cross entropy against smoothed targets (Sec. 5.4), and the weight sum.

  The true token gets 1 - label_smoothing and every other token label_smoothing / (N - 1). The
  entropy of that distribution is subtracted, so a perfect prediction has loss 0.

  Args:
    logits: `[B, L, N]` (float32); targets: `[B, L]` ids; weights: `[B, L]` (0 for padding).
  """
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab_size - 1)
  entropy = -(confidence * jnp.log(confidence) +
              (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
  # sum_n soft_n log p_n = (confidence - low) log p_target + low sum_n log p_n: one pass over
  # the log-softmax and a gather, no `[B, L, N]` one-hot.
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  loss = -((confidence - low_confidence) * target_log_probs
           + low_confidence * jnp.sum(log_probs, axis=-1)) - entropy
  return jnp.sum(loss * weights), jnp.sum(weights)


def cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Plain (unsmoothed) negative log-likelihood sum, for perplexity, and the weight sum."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
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
