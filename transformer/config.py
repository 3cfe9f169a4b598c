"""The model's configuration: one frozen dataclass passed to every module.

Run modes (training vs. evaluation, full vs. incremental decoding) are call arguments, not fields,
so one `ModelConfig` serves training, evaluation and decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

POSITIONAL_ENCODINGS = ("sinusoidal", "learned", "none")
NORMALIZATIONS = ("post", "pre")
ACTIVATIONS = ("relu", "gelu")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_KERNELS = ("xla", "jax", "blockwise", "cudnn")
# Kernels by platform: cuDNN's fused attention exists only on NVIDIA GPUs.
KERNELS_ON_PLATFORM = {"gpu": ATTENTION_KERNELS, "cuda": ATTENTION_KERNELS}
PORTABLE_KERNELS = ("xla", "jax", "blockwise")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of the encoder-decoder Transformer (names follow the paper).

  `d_k`/`d_v` default to `d_model // num_heads` (Sec. 3.2.2); Table 3 rows (A)/(B) set them.
  `target_vocab_size=None` means one vocabulary shared by source and target.
  """

  vocab_size: int = 32000
  target_vocab_size: int | None = None
  d_model: int = 512
  num_heads: int = 8
  d_ff: int = 2048
  encoder_layers: int = 6
  decoder_layers: int = 6
  d_k: int | None = None
  d_v: int | None = None
  dropout_rate: float = 0.1
  # Dropout on attention weights; the paper's base model (and tensor2tensor v1) uses none.
  attention_dropout_rate: float = 0.0
  max_len: int = 256
  # Sec. 3.4: source and target embeddings share one matrix...
  share_embeddings: bool = True
  # ...which is also the pre-softmax linear transformation.
  tie_output_embedding: bool = True
  positional_encoding: str = "sinusoidal"
  normalization: str = "post"
  activation: str = "relu"
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_kernel: str = "xla"
  # The xla kernel's Q K^T product and stored probabilities: float32, or "compute" (the compute
  # dtype; the softmax itself is float32). Halves the [B, H, Q, S] matrices in bfloat16 runs;
  # the same as float32 in float32 runs. Fused kernels never store them.
  attention_probs_dtype: str = "compute"
  # Dtype of the vocabulary logits (the log-sum-exp is float32 either way).
  logits_dtype: str = "float32"
  # Query/key block size of the blockwise (memory-efficient) kernel.
  attention_block_size: int = 512
  remat_policy: str = "none"
  scan_layers: bool = False
  pad_id: int = 0

  def __post_init__(self):
    if self.d_k is None:
      object.__setattr__(self, "d_k", self.d_model // max(self.num_heads, 1))
    if self.d_v is None:
      object.__setattr__(self, "d_v", self.d_model // max(self.num_heads, 1))
    _validate(self)

  @property
  def source_vocab_size(self) -> int:
    """Vocabulary size of the encoder input."""
    return self.vocab_size

  @property
  def output_vocab_size(self) -> int:
    """Vocabulary size of the decoder input and output."""
    return self.target_vocab_size or self.vocab_size

  @property
  def compute_dtype(self) -> jnp.dtype:
    """Dtype of activations and matmuls."""
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    """Dtype in which parameters are stored."""
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes: Any) -> "ModelConfig":
    """Returns a copy with `changes` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Closed-form parameter count, used to check the implementation and in reports."""
    d, h = self.d_model, self.num_heads
    attention = d * h * self.d_k * 2 + h * self.d_k * 2 + d * h * self.d_v + h * self.d_v
    attention += h * self.d_v * d + d  # W^O and its bias
    feed_forward = d * self.d_ff + self.d_ff + self.d_ff * d + d
    layer_norm = 2 * d
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
    total = self.encoder_layers * encoder_layer + self.decoder_layers * decoder_layer
    if self.normalization == "pre":
      total += 2 * layer_norm  # final LayerNorm of each stack
    source_embedding = self.source_vocab_size * d
    target_embedding = self.output_vocab_size * d
    total += target_embedding if self.share_embeddings else source_embedding + target_embedding
    if not self.tie_output_embedding:
      total += d * self.output_vocab_size
    if self.positional_encoding == "learned":
      total += 2 * self.max_len * d
    return total


def _check_positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")


def _validate(config: ModelConfig) -> None:
  """Raises ValueError naming the offending field and what is allowed."""
  positive = ("vocab_size", "d_model", "num_heads", "d_ff", "encoder_layers", "decoder_layers",
              "max_len", "attention_block_size")
  for name in positive:
    _check_positive_int(name, getattr(config, name))
  if config.target_vocab_size is not None and config.target_vocab_size <= 0:
    raise ValueError("ModelConfig.target_vocab_size must be a positive integer or None, "
                     f"got {config.target_vocab_size!r}")
  if config.d_model % config.num_heads:
    raise ValueError(f"ModelConfig.d_model ({config.d_model}) must be divisible by "
                     f"ModelConfig.num_heads ({config.num_heads})")
  _check_positive_int("d_k", config.d_k)
  _check_positive_int("d_v", config.d_v)
  for name in ("dropout_rate", "attention_dropout_rate"):
    value = getattr(config, name)
    if not 0.0 <= value < 1.0:
      raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {value!r}")
  if config.layer_norm_epsilon <= 0:
    raise ValueError(f"ModelConfig.layer_norm_epsilon must be positive, got "
                     f"{config.layer_norm_epsilon!r}")
  choices = {
      "positional_encoding": POSITIONAL_ENCODINGS,
      "normalization": NORMALIZATIONS,
      "activation": ACTIVATIONS,
      "dtype": DTYPES,
      "param_dtype": DTYPES,
      "attention_kernel": ATTENTION_KERNELS,
      "remat_policy": REMAT_POLICIES,
      "attention_probs_dtype": ("float32", "compute"),
      "logits_dtype": DTYPES,
  }
  for name, allowed in choices.items():
    value = getattr(config, name)
    if value not in allowed:
      raise ValueError(f"ModelConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
  if (config.share_embeddings and config.target_vocab_size is not None
      and config.target_vocab_size != config.vocab_size):
    raise ValueError("ModelConfig.share_embeddings=True needs one vocabulary: target_vocab_size "
                     f"({config.target_vocab_size}) differs from vocab_size ({config.vocab_size})")
  if config.attention_kernel == "cudnn":
    _check_cudnn(config)
  if config.attention_kernel in ("jax", "cudnn") and config.d_k != config.d_v:
    raise ValueError(f"ModelConfig.attention_kernel='{config.attention_kernel}' needs d_k == d_v "
                     f"(got d_k={config.d_k}, d_v={config.d_v}); use 'xla' or 'blockwise'")
  if config.attention_kernel != "xla" and config.attention_dropout_rate:
    raise ValueError(f"ModelConfig.attention_kernel='{config.attention_kernel}' has no "
                     "attention dropout; set attention_dropout_rate=0 or use "
                     "attention_kernel='xla'")
  if not 0 <= config.pad_id < config.vocab_size:
    raise ValueError(f"ModelConfig.pad_id must be a token id in [0, vocab_size), got "
                     f"{config.pad_id!r}")


def _check_cudnn(config: ModelConfig) -> None:
  """cuDNN's fused attention: half-precision compute, head sizes it has kernels for."""
  if config.dtype not in ("bfloat16", "float16"):
    raise ValueError(f"ModelConfig.attention_kernel='cudnn' computes in bfloat16 or float16 only; "
                     f"ModelConfig.dtype is {config.dtype!r} (set dtype=bfloat16, or use "
                     "attention_kernel='jax' or 'xla' for float32)")
  if config.d_k % 8 or config.d_k > 128:
    raise ValueError(f"ModelConfig.attention_kernel='cudnn' needs d_k a multiple of 8 and at most "
                     f"128 (got d_k={config.d_k}); use 'jax' or 'xla'")


def check_kernel_platform(config: ModelConfig, platform: str) -> None:
  """Raises ValueError when the attention kernel cannot run on `platform` (cpu, gpu, tpu)."""
  allowed = KERNELS_ON_PLATFORM.get(platform, PORTABLE_KERNELS)
  if config.attention_kernel not in allowed:
    raise ValueError(f"ModelConfig.attention_kernel={config.attention_kernel!r} does not run on "
                     f"{platform}; kernels there: {', '.join(allowed)}")


def base(**overrides: Any) -> ModelConfig:
  """The paper's base model (Table 3, first row): 512/8/2048, 6+6 layers, dropout 0.1."""
  return ModelConfig(**{"vocab_size": 37000, **overrides})


def big(**overrides: Any) -> ModelConfig:
  """The paper's big model (Table 3, last row): 1024/16/4096, 6+6 layers, dropout 0.3."""
  defaults = dict(vocab_size=37000, d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3)
  return ModelConfig(**{**defaults, **overrides})


def tiny(**overrides: Any) -> ModelConfig:
  """A model small enough for unit tests and CPU smoke runs."""
  defaults = dict(vocab_size=64, d_model=32, num_heads=4, d_ff=64, encoder_layers=2,
                  decoder_layers=2, max_len=64)
  return ModelConfig(**{**defaults, **overrides})


PRESETS = {"base": base, "big": big, "tiny": tiny}


def from_dict(fields: Mapping[str, Any]) -> ModelConfig:
  """Builds a `ModelConfig` from a mapping (e.g. `config.model` of a ConfigDict)."""
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"unknown model field(s) {', '.join(unknown)}; known fields: "
                     f"{', '.join(sorted(known))}")
  return ModelConfig(**fields)
