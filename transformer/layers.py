"""The Transformer's building blocks: embeddings, positional encodings, feed-forward, layers.

Glossary: B batch, L length, D d_model, F d_ff, N vocabulary size.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from transformer.attention import MultiHeadAttention
from transformer.config import ModelConfig
from transformer.masks import Mask

_ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
}


def sinusoidal_encoding(positions: jnp.ndarray, d_model: int) -> jnp.ndarray:
  """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...)  (Sec. 3.5).

  Args:
    positions: integer positions of any shape `[...]`.
  Returns:
    float32 `[..., d_model]`, sines at even and cosines at odd feature indices.
  """
  two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)  # the even feature indices 2i
  angles = positions[..., None].astype(jnp.float32) / jnp.power(10000.0, two_i / d_model)
  interleaved = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [..., D/2, 2]
  return interleaved.reshape(*positions.shape, -1)[..., :d_model]


class Embedding(nn.Module):
  """Token embedding scaled by sqrt(d_model) (Sec. 3.4), also usable as the output projection.

  Initialized from N(0, d_model^-0.5) so that the scaled embedding has unit variance.
  """

  config: ModelConfig
  vocab_size: int

  def setup(self):
    d_model = self.config.d_model
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=d_model**-0.5),
                                     ("vocab", "embed")),
        (self.vocab_size, d_model), self.config.weight_dtype)

  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    """`[B, L]` token ids -> `[B, L, D]` embeddings times sqrt(d_model)."""
    embedded = jnp.take(self.embedding, ids, axis=0).astype(self.config.compute_dtype)
    return embedded * np.sqrt(self.config.d_model).astype(self.config.compute_dtype)

  def attend(self, x: jnp.ndarray) -> jnp.ndarray:
    """The pre-softmax linear transformation with the shared matrix: `[B, L, D] -> [B, L, N]`.

    In `config.logits_dtype`: float32 by default, so the softmax over a large vocabulary stays
    accurate in bfloat16 runs; bfloat16 halves the logits' memory (losses then take the
    log-sum-exp in float32).
    """
    dtype = jnp.dtype(self.config.logits_dtype)
    return jnp.einsum("bld,nd->bln", x.astype(dtype), self.embedding.astype(dtype))


class PositionalEncoding(nn.Module):
  """Adds position information to the embeddings: sinusoids, a learned table, or nothing.

  `positions` (per-segment positions of packed rows) default to 0..L-1. With `decode=True` the
  position of each step is counted in the `cache` collection.
  """

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, positions: jnp.ndarray | None = None) -> jnp.ndarray:
    """`[B, L, D]` -> `[B, L, D]`."""
    config = self.config
    if config.positional_encoding == "none":
      return x
    length = x.shape[1]
    if positions is None:
      positions = jnp.arange(length)[None, :]
    if self.decode:
      is_initialized = self.has_variable("cache", "position_index")
      index = self.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
      if is_initialized:
        positions = index.value + jnp.arange(length)[None, :]
        index.value = index.value + length
    if config.positional_encoding == "learned":
      table = self.param(
          "position_embedding",
          nn.with_logical_partitioning(nn.initializers.normal(stddev=config.d_model**-0.5),
                                       ("length", "embed")),
          (config.max_len, config.d_model), config.weight_dtype)
      encoding = jnp.take(table, positions, axis=0)
    else:
      encoding = sinusoidal_encoding(positions, config.d_model)
    return x + encoding.astype(x.dtype)


class FeedForward(nn.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position separately (Sec. 3.3)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """`[B, L, D]` -> `[B, L, D]` through a hidden layer of size d_ff."""
    config = self.config
    dense = lambda features, axes, name: nn.Dense(
        features,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
        name=name)
    hidden = _ACTIVATIONS[config.activation](dense(config.d_ff, ("embed", "mlp"), "wi")(x))
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    return dense(config.d_model, ("mlp", "embed"), "wo")(hidden)


def layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
  """LayerNorm over d_model (statistics in float32)."""
  return nn.LayerNorm(
      epsilon=config.layer_norm_epsilon,
      dtype=config.compute_dtype,
      param_dtype=config.weight_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
      name=name)


class Sublayer(nn.Module):
  """Residual connection and LayerNorm around a sub-layer, with dropout on its output (Sec. 5.4).

  `post` (the paper): LayerNorm(x + Dropout(Sublayer(x))).
  `pre`: x + Dropout(Sublayer(LayerNorm(x))), the stack then ends with a LayerNorm.
  """

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, sublayer: Callable[[jnp.ndarray], jnp.ndarray]
               ) -> jnp.ndarray:
    """Applies `sublayer` to `[B, L, D]` inside the residual block."""
    norm = layer_norm(self.config, "norm")
    dropout = nn.Dropout(self.config.dropout_rate)
    if self.config.normalization == "pre":
      return x + dropout(sublayer(norm(x)), deterministic=self.deterministic)
    return norm(x + dropout(sublayer(x), deterministic=self.deterministic))


def _constrain(x: jnp.ndarray) -> jnp.ndarray:
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """Self-attention then feed-forward, each inside a residual `Sublayer` (Sec. 3.1)."""

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: Mask) -> jnp.ndarray:
    """`[B, L, D]` with a `[B, 1, L, L]` mask -> `[B, L, D]`."""
    config, deterministic = self.config, self.deterministic
    attention = MultiHeadAttention(config, deterministic, name="self_attention")
    x = Sublayer(config, deterministic, name="self_attention_block")(
        _constrain(x), lambda y: attention(y, y, mask))
    x = Sublayer(config, deterministic, name="feed_forward_block")(
        _constrain(x), FeedForward(config, name="feed_forward"))
    return _constrain(x)


class DecoderLayer(nn.Module):
  """Masked self-attention, encoder-decoder attention, feed-forward (Sec. 3.1).

  In encoder-decoder attention the queries come from the decoder and the keys and values from
  the encoder output.
  """

  config: ModelConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, y: jnp.ndarray, encoded: jnp.ndarray | None, self_mask: Mask | None,
               cross_mask: Mask) -> jnp.ndarray:
    """`[B, Lt, D]` targets over `[B, Ls, D]` encoder output -> `[B, Lt, D]`."""
    config, deterministic = self.config, self.deterministic
    self_attention = MultiHeadAttention(config, deterministic, self.decode, name="self_attention")
    cross_attention = MultiHeadAttention(config, deterministic, self.decode, cross=True,
                                         name="encoder_decoder_attention")
    y = Sublayer(config, deterministic, name="self_attention_block")(
        _constrain(y), lambda z: self_attention(z, z, self_mask))
    y = Sublayer(config, deterministic, name="encoder_decoder_attention_block")(
        _constrain(y), lambda z: cross_attention(z, encoded, cross_mask))
    y = Sublayer(config, deterministic, name="feed_forward_block")(
        _constrain(y), FeedForward(config, name="feed_forward"))
    return _constrain(y)


def remat_policy(name: str) -> Callable | None:
  """The `jax.checkpoint` policy for `ModelConfig.remat_policy` (None saves nothing)."""
  return {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
  }[name]
