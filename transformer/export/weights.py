"""A trained model's parameters in the layout inference engines load, and what they can express.

Flax keeps attention projections as `[d_model, heads, d_k]` kernels (x @ W) and may stack the
layers of a scanned model along a leading axis. Serving engines (CTranslate2, PyTorch) take
`[out, in]` matrices per layer. `from_params` converts once; the exporters only rename.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flax import traverse_util

from transformer.config import ModelConfig
from transformer.data.tokenizer import SplitTokenizer, TokenizerBase
from transformer.layers import sinusoidal_encoding


class ExportError(ValueError):
  """A checkpoint the export target cannot express; the message names the option."""


@dataclasses.dataclass
class Linear:
  """y = x @ weight.T + bias, with `weight` as `[out, in]`."""

  weight: np.ndarray
  bias: np.ndarray


@dataclasses.dataclass
class Norm:
  """LayerNorm's scale (gamma) and bias (beta)."""

  gamma: np.ndarray
  beta: np.ndarray


@dataclasses.dataclass
class Attention:
  """One multi-head attention sub-layer and the LayerNorm of its residual block."""

  query: Linear
  key: Linear
  value: Linear
  out: Linear
  norm: Norm


@dataclasses.dataclass
class Layer:
  """An encoder layer (`cross_attention` None) or a decoder layer."""

  self_attention: Attention
  cross_attention: Attention | None
  ffn_in: Linear
  ffn_out: Linear
  ffn_norm: Norm


@dataclasses.dataclass
class Weights:
  """Everything a Transformer of ours computes with, as float32 NumPy arrays."""

  source_embedding: np.ndarray  # [V, D], before the sqrt(d_model) scaling
  target_embedding: np.ndarray  # [V, D]
  output_projection: np.ndarray  # [V, D] (the target embedding when tied)
  encoder_layers: list[Layer]
  decoder_layers: list[Layer]
  encoder_final_norm: Norm | None  # pre-LN models only
  decoder_final_norm: Norm | None
  encoder_positions: np.ndarray | None  # [max_len, D] with positional_encoding="learned"
  decoder_positions: np.ndarray | None


def _array(value: Any) -> np.ndarray:
  # A writable copy: CTranslate2 quantizes in place, and arrays viewed from JAX are read-only.
  return np.array(value, dtype=np.float32)


def _layer_params(stack: dict[str, Any], index: int, scanned: bool) -> dict[str, Any]:
  if scanned:  # nn.scan stacks every layer's parameters along a leading axis
    return traverse_util.unflatten_dict({key: value[index] for key, value in
                                         traverse_util.flatten_dict(stack["layers"]).items()})
  return stack[f"layer_{index}"]


def _projection_in(params: dict[str, Any]) -> Linear:
  kernel = _array(params["kernel"])  # [D, H, K]
  return Linear(kernel.reshape(kernel.shape[0], -1).T, _array(params["bias"]).reshape(-1))


def _projection_out(params: dict[str, Any]) -> Linear:
  kernel = _array(params["kernel"])  # [H, K, D]
  return Linear(kernel.reshape(-1, kernel.shape[-1]).T, _array(params["bias"]))


def _dense(params: dict[str, Any]) -> Linear:
  return Linear(_array(params["kernel"]).T, _array(params["bias"]))


def _norm(params: dict[str, Any]) -> Norm:
  return Norm(_array(params["scale"]), _array(params["bias"]))


def _attention(params: dict[str, Any], name: str) -> Attention:
  heads = params[name]
  return Attention(_projection_in(heads["query"]), _projection_in(heads["key"]),
                   _projection_in(heads["value"]), _projection_out(heads["out"]),
                   _norm(params[f"{name}_block"]["norm"]))


def _layer(params: dict[str, Any], decoder: bool) -> Layer:
  return Layer(_attention(params, "self_attention"),
               _attention(params, "encoder_decoder_attention") if decoder else None,
               _dense(params["feed_forward"]["wi"]), _dense(params["feed_forward"]["wo"]),
               _norm(params["feed_forward_block"]["norm"]))


def from_params(params: dict[str, Any], config: ModelConfig) -> Weights:
  """Our (unboxed) parameter tree as `Weights`."""
  target = _array(params["target_embedding"]["embedding"])
  source = (_array(params["source_embedding"]["embedding"]) if not config.share_embeddings
            else target)
  output = target if config.tie_output_embedding else _array(
      params["decoder"]["logits"]["kernel"]).T
  stacks = {side: params[side]["layers"] for side in ("encoder", "decoder")}
  final = {side: _norm(params[side]["final_norm"]) if config.normalization == "pre" else None
           for side in ("encoder", "decoder")}
  positions = {side: _array(params[side]["positional_encoding"]["position_embedding"])
               if config.positional_encoding == "learned" else None
               for side in ("encoder", "decoder")}
  return Weights(
      source_embedding=source, target_embedding=target, output_projection=output,
      encoder_layers=[_layer(_layer_params(stacks["encoder"], i, config.scan_layers), False)
                      for i in range(config.encoder_layers)],
      decoder_layers=[_layer(_layer_params(stacks["decoder"], i, config.scan_layers), True)
                      for i in range(config.decoder_layers)],
      encoder_final_norm=final["encoder"], decoder_final_norm=final["decoder"],
      encoder_positions=positions["encoder"], decoder_positions=positions["decoder"])


def position_table(config: ModelConfig, learned: np.ndarray | None, num_positions: int
                   ) -> np.ndarray:
  """What one side adds at positions 0..num_positions-1: our interleaved sinusoids (sin at
  even, cos at odd features), its `learned` table (`max_len` rows), or zeros."""
  if config.positional_encoding == "learned":
    return learned
  if config.positional_encoding == "none":
    return np.zeros((num_positions, config.d_model), np.float32)
  return np.asarray(sinusoidal_encoding(np.arange(num_positions), config.d_model), np.float32)


def interleaved_to_halves(d_model: int) -> np.ndarray:
  """The feature order that turns our interleaved sinusoids into sines-then-cosines halves.

  Our PE puts sin(pos / 10000^(2i/d)) at feature 2i and its cosine at 2i+1; Marian's puts the
  sine at i and the cosine at d/2 + i. Reordering every model-dimension axis by this order
  (embeddings, every matrix that reads or writes the residual stream, LayerNorms) leaves the
  network's function unchanged and makes its positional encoding Marian's.
  """
  return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


def _reorder_linear(linear: Linear, order: np.ndarray, rows: bool, columns: bool) -> Linear:
  weight = linear.weight[:, order] if columns else linear.weight
  if rows:
    return Linear(weight[order], linear.bias[order])
  return Linear(weight, linear.bias)


def _reorder_attention(attention: Attention, order: np.ndarray) -> Attention:
  reads = lambda linear: _reorder_linear(linear, order, rows=False, columns=True)
  return Attention(reads(attention.query), reads(attention.key), reads(attention.value),
                   _reorder_linear(attention.out, order, rows=True, columns=False),
                   _reorder_norm(attention.norm, order))


def _reorder_norm(norm: Norm | None, order: np.ndarray) -> Norm | None:
  return None if norm is None else Norm(norm.gamma[order], norm.beta[order])


def _reorder_layer(layer: Layer, order: np.ndarray) -> Layer:
  return Layer(_reorder_attention(layer.self_attention, order),
               layer.cross_attention and _reorder_attention(layer.cross_attention, order),
               _reorder_linear(layer.ffn_in, order, rows=False, columns=True),
               _reorder_linear(layer.ffn_out, order, rows=True, columns=False),
               _reorder_norm(layer.ffn_norm, order))


def reorder_model_dimension(weights: Weights, order: np.ndarray) -> Weights:
  """The same network with its d_model features in `order` (see `interleaved_to_halves`)."""
  columns = lambda matrix: None if matrix is None else matrix[:, order]
  return Weights(
      source_embedding=columns(weights.source_embedding),
      target_embedding=columns(weights.target_embedding),
      output_projection=columns(weights.output_projection),
      encoder_layers=[_reorder_layer(layer, order) for layer in weights.encoder_layers],
      decoder_layers=[_reorder_layer(layer, order) for layer in weights.decoder_layers],
      encoder_final_norm=_reorder_norm(weights.encoder_final_norm, order),
      decoder_final_norm=_reorder_norm(weights.decoder_final_norm, order),
      encoder_positions=columns(weights.encoder_positions),
      decoder_positions=columns(weights.decoder_positions))


def check_common(config: ModelConfig, tokenizer: TokenizerBase, target: str) -> None:
  """`ExportError` for what neither CTranslate2 nor Marian can express."""
  if isinstance(tokenizer, SplitTokenizer):
    raise ExportError(f"config.tokenizer.vocabularies=separate: {target} maps tokens to ids "
                      "with one vocabulary per side, and ours are two SentencePiece models in "
                      "one id space; export a model trained with vocabularies=joint")
  if config.d_k * config.num_heads != config.d_model or config.d_v != config.d_k:
    raise ExportError(f"model.d_k={config.d_k}, model.d_v={config.d_v}: {target} needs "
                      f"d_k = d_v = d_model / num_heads = {config.d_model // config.num_heads}")


def vocabulary(tokenizer: TokenizerBase, size: int) -> list[str]:
  """The piece of every id the embedding has rows for; rows beyond the SentencePiece model
  (SentencePiece may stop short of `vocab_size`) get placeholder names, so the engines keep
  our softmax over all rows."""
  pieces = tokenizer.pieces(range(tokenizer.vocab_size))
  return pieces + [f"<unused_{index}>" for index in range(len(pieces), size)]
