"""A plain Flax Linen encoder-decoder, the second peer of `train_speed.py`.

Written the way a Flax user would write it from the framework's own parts and defaults:
`nn.Embed` (shared, also the output layer), `nn.MultiHeadDotProductAttention`, `nn.Dense`,
`nn.LayerNorm`, `nn.Dropout` (threefry keys), `optax.adam` and optax's smoothed cross entropy.
No packing: padding-free rows, a causal mask only in decoder self-attention, no segment ids or
positions, no metrics beyond the loss. Same sizes and math as our model (post-LN, ReLU,
sinusoidal positions, embeddings scaled by sqrt(d_model)), so the same XLA compiles both.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def sinusoids(length: int, d_model: int) -> np.ndarray:
  """`[length, d_model]` sines at even and cosines at odd features (Sec. 3.5)."""
  angles = np.arange(length)[:, None] / 10000 ** (np.arange(0, d_model, 2) / d_model)
  return np.stack([np.sin(angles), np.cos(angles)], -1).reshape(length, d_model)


class Block(nn.Module):
  """Post-LN layer: self-attention, optional cross-attention, feed-forward."""

  heads: int
  d_ff: int
  dropout: float
  cross: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, memory, mask, train: bool):
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=not train)
    d_model = x.shape[-1]
    attention = lambda: nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype)
    norm = lambda: nn.LayerNorm(dtype=self.dtype)
    x = norm()(x + drop(attention()(x, x, mask=mask)))
    if self.cross:
      x = norm()(x + drop(attention()(x, memory)))
    hidden = nn.relu(nn.Dense(self.d_ff, dtype=self.dtype)(x))
    return norm()(x + drop(nn.Dense(d_model, dtype=self.dtype)(hidden)))


class PlainTransformer(nn.Module):
  """Encoder-decoder with a shared embedding; returns logits `[B, T, V]`."""

  vocab: int
  d_model: int
  heads: int
  d_ff: int
  layers: int
  dropout: float = 0.1
  dtype: Any = jnp.float32  # compute dtype (bfloat16 on GPU); parameters stay float32

  @nn.compact
  def __call__(self, source, decoder_input, train: bool = True):
    embed = nn.Embed(self.vocab, self.d_model, dtype=self.dtype)
    positions = jnp.asarray(sinusoids(source.shape[1], self.d_model), jnp.float32)

    def embedded(ids):
      y = embed(ids) * np.sqrt(self.d_model) + positions[:ids.shape[1]]
      return nn.Dropout(self.dropout)(y, deterministic=not train)

    memory = embedded(source)
    for _ in range(self.layers):
      block = Block(self.heads, self.d_ff, self.dropout, False, self.dtype)
      memory = block(memory, None, None, train)
    y = embedded(decoder_input)
    causal = nn.make_causal_mask(decoder_input)
    for _ in range(self.layers):
      y = Block(self.heads, self.d_ff, self.dropout, True, self.dtype)(y, memory, causal, train)
    return embed.attend(y).astype(jnp.float32)


def make_step(vocab: int, d_model: int, heads: int, d_ff: int, layers: int, source: np.ndarray,
              target: np.ndarray, dtype: Any = jnp.float32) -> tuple[Callable, tuple]:
  """(jitted step, initial (params, opt_state, key)) for the plain Flax model on one batch."""
  model = PlainTransformer(vocab, d_model, heads, d_ff, layers, dtype=dtype)
  shift = lambda target: jnp.pad(target, ((0, 0), (1, 0)))[:, :-1]
  params = model.init(jax.random.PRNGKey(0), source, shift(target), train=False)["params"]
  optimizer = optax.adam(1e-4, b1=0.9, b2=0.98, eps=1e-9)

  def step(params, opt_state, key, source, target):
    key, dropout_key = jax.random.split(key)

    def loss_fn(params):
      logits = model.apply({"params": params}, source, shift(target),
                           rngs={"dropout": dropout_key})
      labels = optax.smooth_labels(jax.nn.one_hot(target, vocab), 0.1)
      return optax.softmax_cross_entropy(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, key, loss

  return jax.jit(step, donate_argnums=(0, 1, 2)), (params, optimizer.init(params),
                                                   jax.random.PRNGKey(1))


def state_threading(step: Callable, source: np.ndarray, target: np.ndarray
                    ) -> Callable[[tuple], tuple[tuple, Any]]:
  """`step` as state -> (new state, loss) on a fixed batch (for train_speed.timed_runner)."""

  def advance(state: tuple) -> tuple[tuple, Any]:
    *new_state, loss = step(*state, source, target)
    return tuple(new_state), loss

  return advance
