"""Model FLOPs of a training step, written from the architecture, peak FLOP/s, and MFU.

MFU follows the usual definition (PaLM, Chowdhery et al. 2022, App. B): the FLOPs the model
needs for the tokens it processed (forward and backward, no recomputation, no replicated
optimizer work) divided by elapsed time and the hardware's peak. XLA's own count
(`cost_analysis()["flops"]`, per device) is reported beside it but not used for MFU: it includes
rematerialisation, element-wise work and work replicated across devices.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from transformer import tpu_slices
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


# JAX's device kinds of each TPU generation in tpu_slices.CHIPS.
_TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5p": "v5p",
              "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
# Dense bf16 peak FLOP/s per device, for MFU: TPUs from the chip table, GPUs from NVIDIA's
# spec sheets (dense, without sparsity).
PEAK_FLOPS = {**{kind: tpu_slices.CHIPS[generation].peak_bf16_flops
                 for kind, generation in _TPU_KINDS.items()},
              "H100": 989e12, "H200": 989e12, "A100": 312e12}


def measured_cpu_peak_flops(size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a large jitted float32 matmul on this host (the CPU's practical peak)."""
  return measured_matmul_flops(size, repeats, jnp.float32)


def measured_matmul_flops(size: int, repeats: int, dtype: jnp.dtype) -> float:
  """FLOP/s of a `size`^3 jitted matmul on the default device: the fastest of `repeats` calls,
  so that a moment of other load does not lower it."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  fastest = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    fastest = min(fastest, time.perf_counter() - start)
  return 2 * size**3 / fastest


def corrected_peak(peak: float, achieved_flops: float, configured: float) -> float:
  """The peak to divide by: a measured CPU peak below what a train step achieved was measured
  while other work loaded the cores (MFU > 100%), so it is measured again (the larger counts)."""
  if configured > 0 or achieved_flops <= peak or jax.devices()[0].platform != "cpu":
    return peak
  return max(peak, measured_cpu_peak_flops())


def peak_flops(configured: float, num_devices: int) -> float:
  """Peak FLOP/s of `num_devices` devices together: configured per device, from the spec table,
  or measured (CPU: simulated devices share the host's cores, so the host's matmul peak)."""
  devices = jax.devices()
  if configured > 0:
    return configured * num_devices
  if devices[0].platform == "cpu":
    return measured_cpu_peak_flops()
  kind = devices[0].device_kind
  per_device = next((peak for name, peak in PEAK_FLOPS.items() if name in kind), 0.0)
  return per_device * num_devices
