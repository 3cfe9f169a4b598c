"""Model-agnostic decoding: greedy/sampling and beam search over `tokens_to_logits`.

`tokens_to_logits(tokens [N, 1], cache) -> (logits [N, V], cache)` advances any decoder by one
step; N is batch * beams. Beam search reorders the cache when beams are re-ranked: every cache leaf
with at least two dimensions has the batch on axis 0, except 5-D (layer-scanned) key/value caches
`[layers, N, ...]`, which have it on axis 1.

Glossary: B batch, K beams, L maximum output length, V vocabulary size.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

TokensToLogits = Callable[[jnp.ndarray, Any], tuple[jnp.ndarray, Any]]
NEG_INF = -1.0e7
# When a sentence's beam search ends: `exact` once no live beam can beat its K finished
# hypotheses even at the maximum length (tensor2tensor, Flax); `k_finished` once K hypotheses
# have finished, each an EOS among the K best candidates of its step (fairseq; Hugging Face's
# early_stopping=True): sooner, a heuristic.
EARLY_STOPPING = ("exact", "k_finished")


def check_early_stopping(rule: str) -> None:
  """A one-line error unless `rule` is one of `EARLY_STOPPING`."""
  if rule not in EARLY_STOPPING:
    raise ValueError(f"config.decode.early_stopping must be one of {', '.join(EARLY_STOPPING)}, "
                     f"got {rule!r}")


def length_penalty(length: jnp.ndarray, alpha: float) -> jnp.ndarray:
  """GNMT length penalty ((5 + length) / 6)^alpha (Wu et al. 2016; the paper's Sec. 6.1)."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree: Any, indices: jnp.ndarray, batch_size: int, beams_in: int) -> Any:
  """Selects beams: leaves `[B * beams_in, ...]` by `indices [B, K]` -> `[B * K, ...]`."""
  flat_index = (jnp.arange(batch_size)[:, None] * beams_in + indices).reshape(-1)

  def gather(x):
    if x.ndim <= 1:
      return x  # cache indices and other scalars
    axis = 1 if x.ndim == 5 else 0
    return jnp.take(x, flat_index, axis=axis)

  return jax.tree.map(gather, tree)


def _constrain(logprobs: jnp.ndarray, step: jnp.ndarray, max_lengths: jnp.ndarray,
               eos_id: int, pad_id: int) -> jnp.ndarray:
  """Never padding (id `pad_id` is also the start symbol); only EOS once a sentence reaches its
  maximum length. `[N, V]` log-probabilities, `[N]` limits.

  The forced EOS keeps the model's own log-probability: a hypothesis cut at the limit is scored
  as what it is, a sequence the model would rather have continued. (flax's and t5x's beam search
  instead drop unfinished beams; we keep them so that every sentence gets an output, but give
  them no bonus over hypotheses the model ended itself.)
  """
  logprobs = logprobs.at[:, pad_id].set(NEG_INF)
  at_limit = (step + 1 >= max_lengths)[:, None]
  only_eos = jnp.full_like(logprobs, NEG_INF).at[:, eos_id].set(logprobs[:, eos_id])
  return jnp.where(at_limit, only_eos, logprobs)


def ban_repeated_ngrams(logprobs: jnp.ndarray, sequences: jnp.ndarray, step: jnp.ndarray,
                        n: int) -> jnp.ndarray:
  """Bans every token that would repeat an n-gram already in the hypothesis (fairseq's
  `--no-repeat-ngram-size`). `logprobs [N, V]`, `sequences [N, L]` with `step` tokens written."""
  if n <= 0:
    return logprobs
  length = sequences.shape[1]
  positions = jnp.arange(length)
  # The n-1 tokens that end the hypothesis, against every earlier window of n-1 tokens.
  match = positions + n - 1 < step  # window j is followed by a token j + n - 1 already written
  for k in range(n - 1):
    current = jnp.take(sequences, jnp.clip(step - n + 1 + k, 0, length - 1), axis=1)
    window = jnp.take(sequences, jnp.clip(positions + k, 0, length - 1), axis=1)
    match = match & (window == current[:, None])
  match = match & (step >= n - 1)
  followers = jnp.take(sequences, jnp.clip(positions + n - 1, 0, length - 1), axis=1)
  rows = jnp.arange(sequences.shape[0])[:, None]
  banned = jnp.zeros(logprobs.shape, bool).at[rows, followers].max(match)
  return jnp.where(banned, NEG_INF, logprobs)


def filter_logits(scaled: jnp.ndarray, top_k: int, top_p: float) -> jnp.ndarray:
  """Keeps the `top_k` most likely tokens and the smallest set whose probability reaches
  `top_p` (nucleus sampling, Holtzman et al. 2020); 0 and 1.0 keep everything."""
  if top_k:
    kth_best = jax.lax.top_k(scaled, top_k)[0][:, -1:]
    scaled = jnp.where(scaled < kth_best, NEG_INF, scaled)
  if top_p < 1.0:
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    probabilities = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probabilities, axis=-1) - probabilities  # mass of the better tokens
    kept = jnp.where(before < top_p, ordered, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    scaled = jnp.where(scaled < threshold, NEG_INF, scaled)
  return scaled


def sample(tokens_to_logits: TokensToLogits, cache: Any, max_lengths: jnp.ndarray, *,
           max_length: int, eos_id: int, start_id: int = 0, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, no_repeat_ngram_size: int = 0,
           rng: jax.Array | None = None) -> jnp.ndarray:
  """Greedy (temperature 0) or temperature / top-k / top-p sampling; `[B, L]` ids, 0 after EOS.

  `max_lengths [B]` caps each sentence (e.g. its source length + 50); `max_length` is the static
  size of the output. Sampling needs `rng`: callers give each batch its own key.
  """
  batch_size = max_lengths.shape[0]
  if temperature != 0.0 and rng is None:
    raise ValueError("sampling needs an rng key")
  rng = rng if rng is not None else jax.random.PRNGKey(0)  # unused by greedy decoding

  def cond(state):
    step, _, _, finished, _, _ = state
    return (step < max_length) & ~jnp.all(finished)

  def body(state):
    step, token, output, finished, cache, rng = state
    logits, cache = tokens_to_logits(token[:, None], cache)
    logprobs = _constrain(jax.nn.log_softmax(logits.astype(jnp.float32)), step, max_lengths,
                          eos_id, start_id)
    logprobs = ban_repeated_ngrams(logprobs, output, step, no_repeat_ngram_size)
    if temperature == 0.0:
      next_token = jnp.argmax(logprobs, axis=-1)
    else:
      rng, step_rng = jax.random.split(rng)
      next_token = jax.random.categorical(
          step_rng, filter_logits(logprobs / temperature, top_k, top_p))
    next_token = jnp.where(finished, 0, next_token).astype(jnp.int32)
    output = output.at[:, step].set(next_token)
    return step + 1, next_token, output, finished | (next_token == eos_id), cache, rng

  state = (jnp.array(0), jnp.full([batch_size], start_id, jnp.int32),
           jnp.zeros([batch_size, max_length], jnp.int32), jnp.zeros([batch_size], bool),
           cache, rng)
  return jax.lax.while_loop(cond, body, state)[2]


@flax.struct.dataclass
class _BeamState:
  step: jnp.ndarray  # scalar
  live_sequences: jnp.ndarray  # [B, K, L]
  live_logprobs: jnp.ndarray  # [B, K]
  finished_sequences: jnp.ndarray  # [B, K, L]
  finished_scores: jnp.ndarray  # [B, K], length-normalized
  finished_flags: jnp.ndarray  # [B, K]
  cache: Any


def beam_search(tokens_to_logits: TokensToLogits, cache: Any, max_lengths: jnp.ndarray, *,
                beam_size: int, alpha: float, max_length: int, eos_id: int, start_id: int = 0,
                no_repeat_ngram_size: int = 0, early_stopping: str = "exact"
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search with length penalty; returns sequences `[B, K, L]` and scores `[B, K]`, best first.

  `cache` must already be repeated for the beams (`[B * K, ...]`). A hypothesis ends with EOS;
  its score is log P / length_penalty(length). A sentence's search ends (`early_stopping`,
  `EARLY_STOPPING`) with `exact` once no live beam can still beat the worst of its K finished
  ones (log-probabilities only fall, and with alpha >= 0 the best a live beam can reach is its
  log-probability over the penalty at the maximum length), with `k_finished` once K have
  finished; an ended sentence's hypotheses stay as they are while the rest of the batch goes on,
  so its output does not depend on the batch. Sentences with no finished hypothesis return their
  live beams.
  """
  check_early_stopping(early_stopping)
  batch_size = max_lengths.shape[0]
  beam_max_lengths = jnp.repeat(max_lengths, beam_size)
  initial_logprobs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beam_size - 1)), [batch_size, 1])
  state = _BeamState(
      step=jnp.array(0), live_sequences=jnp.zeros([batch_size, beam_size, max_length], jnp.int32),
      live_logprobs=initial_logprobs,
      finished_sequences=jnp.zeros([batch_size, beam_size, max_length], jnp.int32),
      finished_scores=jnp.full([batch_size, beam_size], NEG_INF),
      finished_flags=jnp.zeros([batch_size, beam_size], bool), cache=cache)

  def ended(state: _BeamState) -> jnp.ndarray:
    """`[B]`: whose search is over."""
    if early_stopping == "k_finished":
      return jnp.all(state.finished_flags, axis=1)
    best_possible = state.live_logprobs[:, 0] / length_penalty(
        max_lengths.astype(jnp.float32), alpha)
    worst_finished = jnp.min(jnp.where(state.finished_flags, state.finished_scores, NEG_INF),
                             axis=1)
    return worst_finished > best_possible

  def cond(state: _BeamState) -> jnp.ndarray:
    return (state.step < max_length) & ~jnp.all(ended(state))

  def body(state: _BeamState) -> _BeamState:
    step = state.step
    previous = jnp.where(step == 0, start_id,
                         state.live_sequences[:, :, jnp.maximum(step - 1, 0)])
    logits, cache = tokens_to_logits(previous.reshape(-1, 1), state.cache)
    logprobs = _constrain(jax.nn.log_softmax(logits.astype(jnp.float32)), step,
                          beam_max_lengths, eos_id, start_id)
    logprobs = ban_repeated_ngrams(
        logprobs, state.live_sequences.reshape(batch_size * beam_size, max_length), step,
        no_repeat_ngram_size)
    vocab_size = logprobs.shape[-1]
    candidates = (state.live_logprobs[:, :, None] +
                  logprobs.reshape(batch_size, beam_size, vocab_size))
    # 2K candidates guarantee K that do not end here, whatever ends with EOS.
    top_logprobs, top_indices = jax.lax.top_k(candidates.reshape(batch_size, -1), 2 * beam_size)
    top_beams, top_tokens = top_indices // vocab_size, top_indices % vocab_size
    flat_live = state.live_sequences.reshape(batch_size * beam_size, max_length)
    top_sequences = _gather_beams(flat_live, top_beams, batch_size, beam_size)
    top_sequences = top_sequences.reshape(batch_size, 2 * beam_size, max_length)
    top_sequences = top_sequences.at[:, :, step].set(top_tokens)
    ends = top_tokens == eos_id

    # Live beams: the K best candidates that did not just end.
    live_logprobs, live_choice = jax.lax.top_k(jnp.where(ends, NEG_INF, top_logprobs), beam_size)
    live_sequences = jnp.take_along_axis(top_sequences, live_choice[:, :, None], axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(top_beams, live_choice, axis=1), batch_size,
                          beam_size)

    # Finished: merge the new hypotheses (normalized by length) with the old, keep the K best.
    new_scores = top_logprobs / length_penalty(step + 1.0, alpha)
    finishing = ends & (top_logprobs > NEG_INF / 2)
    if early_stopping == "k_finished":  # as fairseq: only among the K best candidates, or
      finishing &= jnp.arange(2 * beam_size) < beam_size  # unlikely EOS would fill the K slots
    new_scores = jnp.where(finishing, new_scores, NEG_INF)
    all_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    all_flags = jnp.concatenate([state.finished_flags, new_scores > NEG_INF / 2], axis=1)
    all_sequences = jnp.concatenate([state.finished_sequences, top_sequences], axis=1)
    finished_scores, finished_choice = jax.lax.top_k(all_scores, beam_size)
    # Under `exact` an ended sentence's finished set cannot change any more (no new hypothesis
    # can beat its worst), so only `k_finished` needs to hold it.
    over = ended(state) if early_stopping == "k_finished" else None
    keep = lambda old, new: new if over is None else jnp.where(
        over.reshape((-1,) + (1,) * (old.ndim - 1)), old, new)
    return _BeamState(
        step=step + 1, live_sequences=live_sequences, live_logprobs=live_logprobs,
        finished_sequences=keep(state.finished_sequences, jnp.take_along_axis(
            all_sequences, finished_choice[:, :, None], axis=1)),
        finished_scores=keep(state.finished_scores, finished_scores),
        finished_flags=keep(state.finished_flags,
                            jnp.take_along_axis(all_flags, finished_choice, axis=1)),
        cache=cache)

  final = jax.lax.while_loop(cond, body, state)
  any_finished = jnp.any(final.finished_flags, axis=1)
  live_scores = final.live_logprobs / length_penalty(final.step.astype(jnp.float32), alpha)
  sequences = jnp.where(any_finished[:, None, None], final.finished_sequences,
                        final.live_sequences)
  scores = jnp.where(any_finished[:, None], final.finished_scores, live_scores)
  return sequences, scores
