"""Translation with a trained Transformer: the model side of `decoding.py`.

The encoder runs once per batch; the decoder advances one token per step with its key/value cache
(or, for comparison, re-runs the full decoder on the prefix each step).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from transformer import decoding
from transformer.special_ids import EOS_ID
from transformer.model import Transformer


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How to search: `beam` (beam_size, alpha), `greedy`, or `sample` (temperature, top_k, top_p,
  seed); `no_repeat_ngram_size` > 0 bans repeated n-grams in any method."""

  method: str = "beam"
  beam_size: int = 4  # Sec. 6.1
  alpha: float = 0.6  # Sec. 6.1
  extra_length: int = 50  # maximum output length = input length + 50 (Sec. 6.1)
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  no_repeat_ngram_size: int = 0
  use_cache: bool = True
  early_stopping: str = "exact"  # beam: decoding.EARLY_STOPPING

  def __post_init__(self):
    if self.method not in ("beam", "greedy", "sample"):
      raise ValueError(f"config.decode.method must be one of beam, greedy, sample; got "
                       f"{self.method!r}")
    decoding.check_early_stopping(self.early_stopping)
    if self.beam_size < 1:
      raise ValueError(f"config.decode.beam_size must be positive, got {self.beam_size}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"config.decode.top_p must be in (0, 1], got {self.top_p}")
    if self.method == "sample" and self.temperature <= 0.0:
      raise ValueError(f"config.decode.temperature must be positive for sampling, got "
                       f"{self.temperature}")

  @classmethod
  def from_config(cls, decode: Any) -> "DecodeOptions":
    """The settings of an experiment config's `decode` section."""
    return cls(method=decode.method, beam_size=decode.beam_size, alpha=decode.alpha,
               extra_length=decode.extra_length, temperature=decode.temperature,
               top_k=decode.top_k, top_p=decode.get("top_p", 1.0), seed=decode.get("seed", 0),
               no_repeat_ngram_size=decode.get("no_repeat_ngram_size", 0),
               use_cache=decode.use_cache,
               early_stopping=decode.get("early_stopping", "exact"))

  def batch_rng(self, batch_index: int) -> jax.Array:
    """The sampling key of one batch: `seed`, this process and the batch's number folded in, so
    no two batches, processes or seeds draw the same numbers."""
    key = jax.random.fold_in(jax.random.PRNGKey(self.seed), jax.process_index())
    return jax.random.fold_in(key, batch_index)

  @property
  def num_beams(self) -> int:
    """Hypotheses kept per sentence."""
    return self.beam_size if self.method == "beam" else 1


def _cached_step(model: Transformer, params: Any, inputs: jnp.ndarray
                 ) -> decoding.TokensToLogits:
  def tokens_to_logits(tokens, cache):
    logits, variables = model.apply({"params": params, "cache": cache}, None, inputs, tokens,
                                    decode=True, method=Transformer.decode, mutable=["cache"])
    return logits[:, 0], variables["cache"]
  return tokens_to_logits


def _uncached_step(model: Transformer, params: Any, inputs: jnp.ndarray, encoded: jnp.ndarray
                   ) -> decoding.TokensToLogits:
  """Re-runs the whole decoder over the prefix each step (the O(L^2)-per-step baseline)."""
  def tokens_to_logits(tokens, cache):
    index = cache["index"]
    prefix = jnp.where(index > 0, cache["targets"].at[:, index - 1].set(tokens[:, 0]),
                       cache["targets"])
    # Target `index` is still unknown; any non-pad id marks the query position as real (its value
    # is invisible to position `index` under the causal mask).
    queried = prefix.at[:, index].set(EOS_ID)
    logits = model.apply({"params": params}, encoded, inputs, queried, method=Transformer.decode)
    return logits[:, index], {"targets": prefix, "index": index + 1}
  return tokens_to_logits


def max_output_lengths(inputs: jnp.ndarray, options: DecodeOptions, limit: int
                       ) -> tuple[jnp.ndarray, int]:
  """Per-sentence cap (source length + extra) and the static output length."""
  source_lengths = jnp.sum(inputs > 0, axis=1)
  static_length = min(inputs.shape[1] + options.extra_length, limit)
  return jnp.minimum(source_lengths + options.extra_length, static_length), static_length


@functools.partial(jax.jit, static_argnames=("model", "options"))
def translate_ids(model: Transformer, params: Any, inputs: jnp.ndarray, options: DecodeOptions,
                  rng: jax.Array | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Token ids `[B, K, L]` (K = beams, else 1) and their scores `[B, K]` for source ids `[B, S]`."""
  beams = options.num_beams
  max_lengths, length = max_output_lengths(inputs, options, model.config.max_len)
  encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
  beam_inputs = jnp.repeat(inputs, beams, axis=0)
  beam_encoded = jnp.repeat(encoded, beams, axis=0)
  if options.use_cache:
    _, variables = model.apply({"params": params}, beam_encoded, beam_inputs, length,
                               method=Transformer.init_cache, mutable=["cache"])
    step, cache = _cached_step(model, params, beam_inputs), variables["cache"]
  else:
    step = _uncached_step(model, params, beam_inputs, beam_encoded)
    cache = {"targets": jnp.zeros((inputs.shape[0] * beams, length), jnp.int32),
             "index": jnp.array(0)}
  if options.method == "beam":
    return decoding.beam_search(step, cache, max_lengths, beam_size=beams, alpha=options.alpha,
                                max_length=length, eos_id=EOS_ID,
                                no_repeat_ngram_size=options.no_repeat_ngram_size,
                                early_stopping=options.early_stopping)
  temperature = 0.0 if options.method == "greedy" else options.temperature
  if options.method == "sample" and rng is None:
    rng = options.batch_rng(0)
  ids = decoding.sample(step, cache, max_lengths, max_length=length, eos_id=EOS_ID,
                        temperature=temperature, top_k=options.top_k, top_p=options.top_p,
                        no_repeat_ngram_size=options.no_repeat_ngram_size, rng=rng)
  return ids[:, None, :], jnp.zeros((inputs.shape[0], 1))


@functools.partial(jax.jit, static_argnames=("model",))
def token_logprobs(model: Transformer, params: Any, inputs: jnp.ndarray, ids: jnp.ndarray
                   ) -> jnp.ndarray:
  """log P(token | source, prefix) of every output token `[B, K, L]` (0 after EOS), by one
  teacher-forced pass: fairseq's positional scores. Their sum is the hypothesis' log P."""
  batch, beams, length = ids.shape
  flat = ids.reshape(batch * beams, length)
  logits = model.apply({"params": params}, jnp.repeat(inputs, beams, axis=0), flat)
  logprobs = jax.nn.log_softmax(logits.astype(jnp.float32))
  picked = jnp.take_along_axis(logprobs, flat[..., None], axis=-1)[..., 0]
  return jnp.where(flat > 0, picked, 0.0).reshape(batch, beams, length)
