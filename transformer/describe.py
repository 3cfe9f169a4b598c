"""A human-readable summary of a model: sizes, parameter counts and one forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from transformer.config import ModelConfig, check_kernel_platform
from transformer.model import Transformer


def parameter_counts(params) -> dict[str, int]:
  """Parameters per top-level module (embeddings, encoder, decoder)."""
  return {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(subtree))
          for name, subtree in params.items()}


def summary(config: ModelConfig, seed: int = 0, batch: int = 2, length: int = 16) -> str:
  """Initializes the model, runs one forward pass and reports shapes and parameter counts."""
  check_kernel_platform(config, jax.devices()[0].platform)
  model = Transformer(config)
  inputs = jnp.ones((batch, length), jnp.int32)
  targets = jnp.ones((batch, length), jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), inputs, targets)["params"])
  logits = jax.jit(model.apply)({"params": params}, inputs, targets)
  counts = parameter_counts(params)
  lines = [f"model: d_model={config.d_model} heads={config.num_heads} d_ff={config.d_ff} "
           f"layers={config.encoder_layers}+{config.decoder_layers} "
           f"norm={config.normalization} positions={config.positional_encoding}"]
  lines += [f"  {name:<18} {n:>12,d} parameters" for name, n in counts.items()]
  lines.append(f"  {'total':<18} {sum(counts.values()):>12,d} parameters "
               f"(closed form {config.num_params():,d})")
  lines.append(f"forward: inputs {tuple(inputs.shape)} targets {tuple(targets.shape)} -> "
               f"logits {tuple(logits.shape)} {logits.dtype}, "
               f"finite={bool(jnp.isfinite(logits).all())}")
  return "\n".join(lines)
