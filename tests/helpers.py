"""Shared test helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from transformer.config import ModelConfig
from transformer.model import Transformer


def random_tokens(seed: int, shape: tuple[int, ...], vocab_size: int, low: int = 3) -> jnp.ndarray:
  """Random non-special token ids in [low, vocab_size)."""
  return jnp.asarray(np.random.RandomState(seed).randint(low, vocab_size, shape), jnp.int32)


def init_params(config: ModelConfig, source_length: int = 7, target_length: int = 5,
                seed: int = 0):
  """Unboxed float parameters of a Transformer with `config`."""
  model = Transformer(config)
  inputs = jnp.ones((1, source_length), jnp.int32)
  targets = jnp.ones((1, target_length), jnp.int32)
  variables = model.init(jax.random.PRNGKey(seed), inputs, targets)
  return model, nn.unbox(variables["params"])


def count(tree) -> int:
  """Number of scalars in a pytree of arrays or shape structs."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# Independent NumPy references of the paper's formulas.

def numpy_attention(q, k, v, mask):
  """softmax(Q K^T / sqrt(d_k)) V per batch element and head, written with plain loops."""
  batch, q_len, heads, d_k = q.shape
  out = np.zeros((batch, q_len, heads, v.shape[-1]))
  for b in range(batch):
    for h in range(heads):
      logits = q[b, :, h] @ k[b, :, h].T / np.sqrt(d_k)
      logits = np.where(mask[b, 0], logits, -np.inf)
      weights = np.exp(logits - logits.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      out[b, :, h] = weights @ v[b, :, h]
  return out


def numpy_multi_head_attention(params, x_q, x_kv, mask):
  """Concat(head_1..head_h) W^O + b with head_i = Attention(x_q W^Q_i, x_kv W^K_i, x_kv W^V_i)."""
  p = jax.tree.map(np.asarray, params)
  project = lambda x, name: np.einsum("bld,dhk->blhk", x, p[name]["kernel"]) + p[name]["bias"]
  heads = numpy_attention(project(x_q, "query"), project(x_kv, "key"), project(x_kv, "value"),
                          mask)
  concatenated = heads.reshape(*x_q.shape[:2], -1)
  return concatenated @ p["out"]["kernel"].reshape(concatenated.shape[-1], -1) + p["out"]["bias"]


def numpy_layer_norm(x, params, epsilon=1e-6):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + epsilon) * np.asarray(params["scale"]) + np.asarray(
      params["bias"])


def numpy_feed_forward(x, params):
  """max(0, x W1 + b1) W2 + b2."""
  p = jax.tree.map(np.asarray, params)
  hidden = np.maximum(0.0, x @ p["wi"]["kernel"] + p["wi"]["bias"])
  return hidden @ p["wo"]["kernel"] + p["wo"]["bias"]
