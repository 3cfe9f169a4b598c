"""The encoder-decoder Transformer (Sec. 3): `encode()`, `decode()` and `__call__()`.

Token id `config.pad_id` (0) is padding and also the decoder's start symbol: the decoder input is
the target shifted right by one. Packed batches carry segment ids (0 = padding, 1.. = sentence
within the row) and per-segment positions.

Glossary: B batch, Ls source length, Lt target length, D d_model, N target vocabulary size.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from transformer import masks
from transformer.config import ModelConfig
from transformer.layers import (DecoderLayer, Embedding, EncoderLayer, PositionalEncoding,
                                layer_norm, remat_policy)


def shift_right(targets: jnp.ndarray, segments: jnp.ndarray | None, start_id: int) -> jnp.ndarray:
  """Decoder inputs: `[B, Lt]` targets shifted right, each (packed) sentence from start_id."""
  shifted = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=start_id)[:, :-1]
  if segments is None:
    return shifted
  shifted_segments = jnp.pad(segments, ((0, 0), (1, 0)))[:, :-1]
  return jnp.where(segments == shifted_segments, shifted, start_id)


def _scan_body(layer: nn.Module, carry: jnp.ndarray, *args: Any) -> tuple[jnp.ndarray, None]:
  return layer(carry, *args), None


class LayerStack(nn.Module):
  """N identical layers applied in turn, optionally rematerialized and/or scanned.

  `nn.scan` stacks the layers' parameters along a leading `layers` axis, so compile time does not
  grow with depth; `nn.remat` recomputes each layer's activations in the backward pass.
  """

  config: ModelConfig
  layer_type: type[nn.Module]
  num_layers: int
  layer_kwargs: dict[str, Any]

  @nn.compact
  def __call__(self, x: jnp.ndarray, *args: Any) -> jnp.ndarray:
    """Applies the layers to `[B, L, D]`; `args` (encoder output, masks) go to every layer."""
    config = self.config
    layer_type = self.layer_type
    if config.remat_policy != "none":
      layer_type = nn.remat(layer_type, policy=remat_policy(config.remat_policy),
                            prevent_cse=not config.scan_layers)
    if not config.scan_layers:
      for i in range(self.num_layers):
        x = layer_type(config, **self.layer_kwargs, name=f"layer_{i}")(x, *args)
      return x
    scanned = nn.scan(
        _scan_body,
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args),
        length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(layer_type(config, **self.layer_kwargs, name="layers"), x, *args)
    return x


class Encoder(nn.Module):
  """Embedding + positional encoding + dropout, then `encoder_layers` identical layers."""

  config: ModelConfig
  embedding: Embedding

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, segments: jnp.ndarray | None = None,
               positions: jnp.ndarray | None = None, *, deterministic: bool = True
               ) -> jnp.ndarray:
    """`[B, Ls]` source ids -> `[B, Ls, D]` encoder output."""
    config = self.config
    x = PositionalEncoding(config, name="positional_encoding")(self.embedding(inputs), positions)
    x = nn.Dropout(config.dropout_rate)(x, deterministic=deterministic)
    mask = masks.encoder_self_attention_mask(inputs, segments, config.pad_id)
    x = LayerStack(config, EncoderLayer, config.encoder_layers,
                   {"deterministic": deterministic}, name="layers")(x, mask)
    if config.normalization == "pre":
      x = layer_norm(config, "final_norm")(x)
    return x


class Decoder(nn.Module):
  """Embedding of the shifted targets, `decoder_layers` identical layers, then logits."""

  config: ModelConfig
  embedding: Embedding

  @nn.compact
  def __call__(self, encoded: jnp.ndarray | None, inputs: jnp.ndarray, targets: jnp.ndarray,
               target_segments: jnp.ndarray | None = None,
               target_positions: jnp.ndarray | None = None,
               input_segments: jnp.ndarray | None = None, *, deterministic: bool = True,
               decode: bool = False, features_only: bool = False) -> jnp.ndarray:
    """Returns logits `[B, Lt, N]` (in `config.logits_dtype`), or with `features_only` the
    `[B, Lt, D]` outputs of the last layer that the logits project.

    With `decode=True`, `targets` are the previous step's tokens `[B, 1]` (already shifted) and
    the key/value cache lives in the `cache` collection.
    """
    config = self.config
    if decode:
      decoder_inputs = targets
      self_mask = None  # the cache masks the positions not yet written
      cross_mask = masks.decode_step_cross_mask(targets, inputs, config.pad_id)
    else:
      decoder_inputs = shift_right(targets, target_segments, config.pad_id)
      self_mask = masks.decoder_self_attention_mask(targets, target_segments, config.pad_id)
      cross_mask = masks.encoder_decoder_mask(targets, target_segments, inputs, input_segments,
                                              config.pad_id)
    y = PositionalEncoding(config, decode, name="positional_encoding")(
        self.embedding(decoder_inputs), target_positions)
    y = nn.Dropout(config.dropout_rate)(y, deterministic=deterministic)
    y = LayerStack(config, DecoderLayer, config.decoder_layers,
                   {"deterministic": deterministic, "decode": decode},
                   name="layers")(y, encoded, self_mask, cross_mask)
    if config.normalization == "pre":
      y = layer_norm(config, "final_norm")(y)
    if features_only:
      return y
    if config.tie_output_embedding:
      return self.embedding.attend(y)
    return nn.Dense(
        config.output_vocab_size, use_bias=False, dtype=jnp.dtype(config.logits_dtype),
        param_dtype=config.weight_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                 ("embed", "vocab")),
        name="logits")(y)


class Transformer(nn.Module):
  """The encoder-decoder Transformer of "Attention Is All You Need"."""

  config: ModelConfig

  def setup(self):
    config = self.config
    self.target_embedding = Embedding(config, config.output_vocab_size)
    self.source_embedding = (self.target_embedding if config.share_embeddings else
                             Embedding(config, config.source_vocab_size))
    self.encoder = Encoder(config, self.source_embedding)
    self.decoder = Decoder(config, self.target_embedding)

  def encode(self, inputs: jnp.ndarray, inputs_segmentation: jnp.ndarray | None = None,
             inputs_positions: jnp.ndarray | None = None, *, deterministic: bool = True
             ) -> jnp.ndarray:
    """`[B, Ls]` source ids -> `[B, Ls, D]`."""
    return self.encoder(inputs, inputs_segmentation, inputs_positions,
                        deterministic=deterministic)

  def decode(self, encoded: jnp.ndarray | None, inputs: jnp.ndarray, targets: jnp.ndarray,
             targets_segmentation: jnp.ndarray | None = None,
             targets_positions: jnp.ndarray | None = None,
             inputs_segmentation: jnp.ndarray | None = None, *, deterministic: bool = True,
             decode: bool = False) -> jnp.ndarray:
    """Logits `[B, Lt, N]` for `targets` given the encoder output of `inputs`.

    `decode=True` runs one incremental step with the cache; `encoded` may then be None once the
    cache holds the encoder-decoder keys/values (see `init_cache`).
    """
    return self.decoder(encoded, inputs, targets, targets_segmentation, targets_positions,
                        inputs_segmentation, deterministic=deterministic, decode=decode)

  def project(self, features: jnp.ndarray) -> jnp.ndarray:
    """The pre-softmax projection alone: `[B, L, D]` decoder features -> `[B, L, N]` logits.

    With `__call__(..., features_only=True)` it lets a loss project a few positions at a time.
    """
    if self.config.tie_output_embedding:
      return self.target_embedding.attend(features)
    dtype = jnp.dtype(self.config.logits_dtype)
    kernel = nn.unbox(self.decoder.variables["params"]["logits"]["kernel"])
    return jnp.einsum("bld,dn->bln", features.astype(dtype), kernel.astype(dtype))

  def init_cache(self, encoded: jnp.ndarray, inputs: jnp.ndarray, max_decode_length: int
                 ) -> jnp.ndarray:
    """Creates the decoding cache (call with `mutable=['cache']`).

    Allocates self-attention caches of `max_decode_length` steps and projects the encoder output
    into the encoder-decoder keys/values, once per sentence. Returns dummy logits to discard.
    """
    dummy_targets = jnp.zeros((inputs.shape[0], max_decode_length), inputs.dtype)
    return self.decode(encoded, inputs, dummy_targets, decode=True)

  def __call__(self, inputs: jnp.ndarray, targets: jnp.ndarray,
               inputs_segmentation: jnp.ndarray | None = None,
               targets_segmentation: jnp.ndarray | None = None,
               inputs_positions: jnp.ndarray | None = None,
               targets_positions: jnp.ndarray | None = None, *,
               deterministic: bool = True, features_only: bool = False) -> jnp.ndarray:
    """Teacher-forced forward pass: `[B, Ls]`, `[B, Lt]` -> logits `[B, Lt, N]` (or, with
    `features_only`, the decoder's `[B, Lt, D]` outputs; see `project`)."""
    encoded = self.encode(inputs, inputs_segmentation, inputs_positions,
                          deterministic=deterministic)
    return self.decoder(encoded, inputs, targets, targets_segmentation, targets_positions,
                        inputs_segmentation, deterministic=deterministic,
                        features_only=features_only)
