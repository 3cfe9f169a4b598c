"""A CTranslate2 model directory from our weights, through CTranslate2's own spec and converter.

The spec is CTranslate2's `TransformerSpec` (post- or pre-LN as trained). Our positional
encoding goes in as an explicit table (`position_encodings.encodings`), so the interleaved
sinusoids need no reordering; our LayerNorm epsilon is in the model's config. The decoder starts
from the `<pad>` token's embedding as ours does (not from a zero vector, as Marian's).
"""

from __future__ import annotations

import ctranslate2
import numpy as np
from ctranslate2.converters.converter import Converter
from ctranslate2.specs import common_spec, transformer_spec

from transformer.config import ModelConfig
from transformer.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, TokenizerBase
from transformer.export import weights as weights_lib
from transformer.export.weights import Attention, Layer, Linear, Norm, Weights

QUANTIZATIONS = ("none", "int8", "int8_float32", "int8_float16", "float16", "bfloat16")
TARGET = "CTranslate2"
POSITIONS = 1024  # rows of the sinusoid table: the longest sentence + output it can translate
_ACTIVATIONS = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELUTanh}


def check(config: ModelConfig, tokenizer: TokenizerBase) -> None:
  """`ExportError` for a model CTranslate2 cannot run as trained."""
  weights_lib.check_common(config, tokenizer, TARGET)


def _set_linear(spec: common_spec.LinearSpec, linear: Linear) -> None:
  spec.weight, spec.bias = linear.weight, linear.bias


def _set_norm(spec: common_spec.LayerNormSpec, norm: Norm) -> None:
  spec.gamma, spec.beta = norm.gamma, norm.beta


def _set_attention(spec, attention: Attention, self_attention: bool) -> None:
  # CTranslate2 fuses Q, K and V (self-attention) or K and V (encoder-decoder attention).
  fused = ([attention.query, attention.key, attention.value] if self_attention
           else [attention.key, attention.value])
  if not self_attention:
    _set_linear(spec.linear[0], attention.query)
  target = spec.linear[0] if self_attention else spec.linear[1]
  target.weight = np.concatenate([linear.weight for linear in fused])
  target.bias = np.concatenate([linear.bias for linear in fused])
  _set_linear(spec.linear[-1], attention.out)
  _set_norm(spec.layer_norm, attention.norm)


def _set_layer(spec, layer: Layer) -> None:
  _set_attention(spec.self_attention, layer.self_attention, self_attention=True)
  if layer.cross_attention is not None:
    _set_attention(spec.attention, layer.cross_attention, self_attention=False)
  _set_linear(spec.ffn.linear_0, layer.ffn_in)
  _set_linear(spec.ffn.linear_1, layer.ffn_out)
  _set_norm(spec.ffn.layer_norm, layer.ffn_norm)


def build_spec(config: ModelConfig, weights: Weights, vocabulary: list[str]
               ) -> transformer_spec.TransformerSpec:
  """CTranslate2's Transformer spec filled with our weights and vocabulary."""
  spec = transformer_spec.TransformerSpec.from_config(
      (config.encoder_layers, config.decoder_layers), config.num_heads,
      pre_norm=config.normalization == "pre", activation=_ACTIVATIONS[config.activation])
  spec.encoder.embeddings[0].weight = weights.source_embedding
  spec.encoder.position_encodings.encodings = weights_lib.position_table(
      config, weights.encoder_positions, POSITIONS)
  spec.decoder.embeddings.weight = weights.target_embedding
  spec.decoder.position_encodings.encodings = weights_lib.position_table(
      config, weights.decoder_positions, POSITIONS)
  spec.decoder.projection.weight = weights.output_projection
  for layer_spec, layer in zip(spec.encoder.layer, weights.encoder_layers):
    _set_layer(layer_spec, layer)
  for layer_spec, layer in zip(spec.decoder.layer, weights.decoder_layers):
    _set_layer(layer_spec, layer)
  if config.normalization == "pre":
    _set_norm(spec.encoder.layer_norm, weights.encoder_final_norm)
    _set_norm(spec.decoder.layer_norm, weights.decoder_final_norm)
  spec.register_source_vocabulary(vocabulary)
  spec.register_target_vocabulary(vocabulary)
  spec.config.layer_norm_epsilon = config.layer_norm_epsilon
  spec.config.add_source_eos = True  # our sources end with EOS
  spec.config.unk_token = vocabulary[UNK_ID]
  spec.config.eos_token = vocabulary[EOS_ID]
  spec.config.bos_token = vocabulary[PAD_ID]  # we have no BOS; the start symbol is <pad>
  spec.config.decoder_start_token = vocabulary[PAD_ID]
  return spec


class _SpecConverter(Converter):
  """CTranslate2's converter (validation, quantization, saving) around a ready spec."""

  def __init__(self, spec: transformer_spec.TransformerSpec):
    self.spec = spec

  def _load(self) -> transformer_spec.TransformerSpec:
    return self.spec


def write(config: ModelConfig, weights: Weights, tokenizer: TokenizerBase, directory: str,
          quantization: str) -> None:
  """Writes the model into `directory` (which must not exist yet)."""
  vocabulary = weights_lib.vocabulary(tokenizer, config.output_vocab_size)
  spec = build_spec(config, weights, vocabulary)
  _SpecConverter(spec).convert(directory, quantization=None if quantization == "none"
                               else quantization)


def translator(directory: str, threads: int = 0) -> ctranslate2.Translator:
  """The exported model on the CPU (`threads` 0: all cores)."""
  return ctranslate2.Translator(directory, device="cpu", intra_threads=threads)
