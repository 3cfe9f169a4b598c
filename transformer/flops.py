"""Model FLOPs of a training step, written from the architecture, and MFU.

MFU follows the usual definition (PaLM, Chowdhery et al. 2022, App. B): the FLOPs the model
needs for the tokens it processed (forward and backward, no recomputation, no replicated
optimizer work) divided by elapsed time and the hardware's peak. XLA's own count
(`cost_analysis()["flops"]`, per device) is reported beside it but not used for MFU: it includes
rematerialisation, element-wise work and work replicated across devices.
"""

from __future__ import annotations

from transformer.config import ModelConfig


def matmul_params_per_token(config: ModelConfig) -> dict[str, int]:
  """Multiply-accumulate weights each token passes through, by where the token comes from.

  `source`: encoder layers plus the decoder's encoder-decoder key/value projections (computed
  once per source token); `target`: decoder self-attention, encoder-decoder query/output,
  feed-forward layers and the output projection.
  """
  d, h = config.d_model, config.num_heads
  qk, v = h * config.d_k, h * config.d_v
  self_attention = d * qk * 2 + d * v + v * d  # W^Q, W^K, W^V, W^O
  feed_forward = 2 * d * config.d_ff
  encoder = config.encoder_layers * (self_attention + feed_forward)
  cross_kv = config.decoder_layers * (d * qk + d * v)
  cross_q_out = config.decoder_layers * (d * qk + v * d)
  decoder = config.decoder_layers * (self_attention + feed_forward) + cross_q_out
  return {"source": encoder + cross_kv, "target": decoder + d * config.output_vocab_size}


def attention_flops_forward(config: ModelConfig, source_length: int, target_length: int) -> int:
  """Forward FLOPs of Q K^T and softmax(.) V for one row (full L x L, as the kernels compute)."""
  h = config.num_heads
  per_pair = 2 * h * (config.d_k + config.d_v)  # one query-key pair: a dot product and a sum
  encoder = config.encoder_layers * source_length**2
  decoder = config.decoder_layers * (target_length**2 + target_length * source_length)
  return per_pair * (encoder + decoder)


def train_step_flops(config: ModelConfig, rows: int, source_length: int,
                     target_length: int) -> float:
  """Model FLOPs of one training step on `rows` rows of the given lengths (forward x 3)."""
  params = matmul_params_per_token(config)
  forward = 2 * rows * (params["source"] * source_length + params["target"] * target_length)
  forward += rows * attention_flops_forward(config, source_length, target_length)
  return 3.0 * forward


def mfu(model_flops_per_step: float, steps: int, seconds: float, peak_flops: float) -> float:
  """Model FLOPs utilisation: model FLOP/s over the peak FLOP/s of all devices together."""
  if seconds <= 0 or peak_flops <= 0:
    return 0.0
  return model_flops_per_step * steps / seconds / peak_flops
