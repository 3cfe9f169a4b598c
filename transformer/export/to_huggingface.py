"""A Hugging Face Transformers `MarianMTModel` directory (with its `MarianTokenizer`).

Marian is the same post-LN encoder-decoder with scaled, shared embeddings, but its sinusoids
are sines-then-cosines halves where ours interleave them: the export reorders the model
dimension (`weights.interleaved_to_halves`), which leaves the function unchanged. Two things
it cannot express are errors: pre-LN stacks, and positions other than sinusoids. One it can
only approximate: Marian's LayerNorm epsilon is PyTorch's fixed 1e-5, ours is
`model.layer_norm_epsilon` (1e-6 by default), a relative difference of ~5e-6 in every
normalized value (the tests bound the logits' difference).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
import transformers

from transformer.config import ModelConfig
from transformer.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, TokenizerBase
from transformer.export import weights as weights_lib
from transformer.export.weights import Attention, Layer, Linear, Norm, Weights

TARGET = "Hugging Face MarianMTModel"
POSITIONS = 1024
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_new"}  # flax's gelu is the tanh approximation


def check(config: ModelConfig, tokenizer: TokenizerBase) -> None:
  """`ExportError` for a model Marian cannot express."""
  weights_lib.check_common(config, tokenizer, TARGET)
  if config.normalization != "post":
    raise weights_lib.ExportError(f"model.normalization={config.normalization}: {TARGET} is "
                                  "post-LN only (export pre-LN models to CTranslate2)")
  if config.positional_encoding != "sinusoidal":
    raise weights_lib.ExportError(
        f"model.positional_encoding={config.positional_encoding}: {TARGET} has sinusoidal "
        "positions only (export to CTranslate2, which takes any table)")
  if not (config.share_embeddings and config.tie_output_embedding):
    raise weights_lib.ExportError(
        "model.share_embeddings/tie_output_embedding: the Marian export writes one shared, "
        "tied embedding matrix; export this model to CTranslate2")


def marian_config(config: ModelConfig) -> transformers.MarianConfig:
  """Marian's config with our sizes and special ids (<pad> = 0 starts the decoder, as ours)."""
  return transformers.MarianConfig(
      vocab_size=config.vocab_size, decoder_vocab_size=config.vocab_size, d_model=config.d_model,
      encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers,
      encoder_attention_heads=config.num_heads, decoder_attention_heads=config.num_heads,
      encoder_ffn_dim=config.d_ff, decoder_ffn_dim=config.d_ff,
      activation_function=_ACTIVATIONS[config.activation], max_position_embeddings=POSITIONS,
      scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
      dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
      pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID,
      forced_eos_token_id=EOS_ID, bos_token_id=None)


def _linear(state: dict[str, torch.Tensor], name: str, linear: Linear) -> None:
  state[f"{name}.weight"] = torch.from_numpy(linear.weight.copy())
  state[f"{name}.bias"] = torch.from_numpy(linear.bias.copy())


def _norm(state: dict[str, torch.Tensor], name: str, norm: Norm) -> None:
  state[f"{name}.weight"] = torch.from_numpy(norm.gamma.copy())
  state[f"{name}.bias"] = torch.from_numpy(norm.beta.copy())


def _attention(state: dict[str, torch.Tensor], name: str, attention: Attention,
               norm_name: str) -> None:
  for projection, linear in (("q_proj", attention.query), ("k_proj", attention.key),
                             ("v_proj", attention.value), ("out_proj", attention.out)):
    _linear(state, f"{name}.{projection}", linear)
  _norm(state, norm_name, attention.norm)


def _layer(state: dict[str, torch.Tensor], prefix: str, layer: Layer) -> None:
  _attention(state, f"{prefix}.self_attn", layer.self_attention, f"{prefix}.self_attn_layer_norm")
  if layer.cross_attention is not None:
    _attention(state, f"{prefix}.encoder_attn", layer.cross_attention,
               f"{prefix}.encoder_attn_layer_norm")
  _linear(state, f"{prefix}.fc1", layer.ffn_in)
  _linear(state, f"{prefix}.fc2", layer.ffn_out)
  _norm(state, f"{prefix}.final_layer_norm", layer.ffn_norm)


def state_dict(weights: Weights) -> dict[str, torch.Tensor]:
  """`MarianMTModel` parameter names -> tensors (model dimension already reordered)."""
  state = {"model.shared.weight": torch.from_numpy(weights.target_embedding.copy())}
  for index, layer in enumerate(weights.encoder_layers):
    _layer(state, f"model.encoder.layers.{index}", layer)
  for index, layer in enumerate(weights.decoder_layers):
    _layer(state, f"model.decoder.layers.{index}", layer)
  return state


def build_model(config: ModelConfig, weights: Weights) -> transformers.MarianMTModel:
  """The Marian model computing what ours computes (in eval mode)."""
  halves = weights_lib.reorder_model_dimension(
      weights, weights_lib.interleaved_to_halves(config.d_model))
  model = transformers.MarianMTModel(marian_config(config))
  missing, unexpected = model.load_state_dict(state_dict(halves), strict=False)
  loaded_elsewhere = {"lm_head.weight", "final_logits_bias", "model.encoder.embed_tokens.weight",
                      "model.decoder.embed_tokens.weight", "model.encoder.embed_positions.weight",
                      "model.decoder.embed_positions.weight"}
  if unexpected or set(missing) - loaded_elsewhere:
    raise RuntimeError(f"Marian parameters not filled: {sorted(set(missing) - loaded_elsewhere)}"
                       f", unknown: {sorted(unexpected)}")
  model.tie_weights()
  return model.eval()


def _tokenizer(tokenizer: TokenizerBase, vocabulary: list[str]) -> transformers.MarianTokenizer:
  with tempfile.TemporaryDirectory() as scratch:
    spm_path = os.path.join(scratch, "sentencepiece.model")
    vocab_path = os.path.join(scratch, "vocab.json")
    with open(spm_path, "wb") as handle:
      handle.write(tokenizer.model_proto)
    with open(vocab_path, "w", encoding="utf-8") as handle:
      json.dump({piece: index for index, piece in enumerate(vocabulary)}, handle,
                ensure_ascii=False)
    return transformers.MarianTokenizer(
        source_spm=spm_path, target_spm=spm_path, vocab=vocab_path,
        eos_token=vocabulary[EOS_ID], unk_token=vocabulary[UNK_ID],
        pad_token=vocabulary[PAD_ID], model_max_length=POSITIONS)


def write(config: ModelConfig, weights: Weights, tokenizer: TokenizerBase, directory: str
          ) -> None:
  """Writes model, generation defaults (beam 4, <pad> banned) and tokenizer into `directory`."""
  model = build_model(config, weights)
  model.generation_config = transformers.GenerationConfig(
      decoder_start_token_id=PAD_ID, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
      forced_eos_token_id=EOS_ID, bad_words_ids=[[PAD_ID]], num_beams=4,
      max_length=POSITIONS)
  model.save_pretrained(directory)
  vocabulary = weights_lib.vocabulary(tokenizer, config.vocab_size)
  _tokenizer(tokenizer, vocabulary).save_pretrained(directory)
