"""Greedy, sampling and beam search: against each other, brute force and the uncached decoder."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import config as configs
from transformer import decoding, inference
from transformer.data.tokenizer import EOS_ID

from helpers import init_params, random_tokens


@pytest.fixture(scope="module")
def tiny_model():
  # One layer per stack (tests/test_model.py checks the cache of stacked layers).
  config = configs.tiny(vocab_size=12, max_len=40, encoder_layers=1, decoder_layers=1)
  model, params = init_params(config)
  params = jax.tree.map(lambda p: p * 3.0, params)  # peakier distributions than at init
  inputs = random_tokens(0, (3, 6), 12).at[2, 4:].set(0)
  return model, params, inputs


def translate(model, params, inputs, **options):
  ids, scores = inference.translate_ids(model, params, inputs,
                                        inference.DecodeOptions(**options))
  return np.asarray(ids), np.asarray(scores)


def test_length_penalty():
  np.testing.assert_allclose(decoding.length_penalty(jnp.array(7.0), 0.6), (12 / 6) ** 0.6)
  assert float(decoding.length_penalty(jnp.array(7.0), 0.0)) == 1.0


def test_beam_of_one_is_greedy(tiny_model):
  model, params, inputs = tiny_model
  greedy, _ = translate(model, params, inputs, method="greedy")
  beam, _ = translate(model, params, inputs, method="beam", beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(beam, greedy)


def test_top_1_sampling_is_greedy(tiny_model):
  model, params, inputs = tiny_model
  greedy, _ = translate(model, params, inputs, method="greedy")
  sampled, _ = translate(model, params, inputs, method="sample", top_k=1, temperature=0.7)
  np.testing.assert_array_equal(sampled, greedy)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_cache_equals_rerunning_the_full_decoder(tiny_model, method):
  model, params, inputs = tiny_model
  cached, cached_scores = translate(model, params, inputs, method=method)
  uncached, uncached_scores = translate(model, params, inputs, method=method, use_cache=False)
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_allclose(cached_scores, uncached_scores, atol=1e-4)


def test_outputs_end_with_eos_within_the_length_limit(tiny_model):
  model, params, inputs = tiny_model
  ids, scores = translate(model, params, inputs, extra_length=3)
  source_lengths = np.sum(np.asarray(inputs) > 0, axis=1)
  for sentence, limit in zip(ids, source_lengths + 3):
    for hypothesis in sentence:
      assert EOS_ID in hypothesis
      length = int(np.argmax(hypothesis == EOS_ID)) + 1
      assert length <= limit and not np.any(hypothesis[length:])
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def sequence_logprobs(model, params, inputs, sequences):
  """log P(sequence | inputs) of each sequence by teacher forcing: the model's own
  log-probabilities only, all sequences in one batch (zero-padded at the end: the decoder is
  causal, so padding after a sequence changes none of its tokens' probabilities)."""
  width = max(map(len, sequences))
  padded = np.array([list(s) + [0] * (width - len(s)) for s in sequences], np.int32)
  batch_inputs = jnp.repeat(inputs, len(sequences), axis=0)
  logits = np.asarray(model.apply({"params": params}, batch_inputs, jnp.asarray(padded)),
                      np.float64)
  logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                                keepdims=True)) \
      - logits.max(-1, keepdims=True)
  return [float(sum(logprobs[row, i, token] for i, token in enumerate(sequence)))
          for row, sequence in enumerate(sequences)]


def test_exhaustive_beam_finds_the_brute_force_best():
  config = configs.tiny(vocab_size=5, max_len=16)
  model, params = init_params(config)
  params = jax.tree.map(lambda p: p * 3.0, params)
  inputs = jnp.array([[3, 4, EOS_ID]])
  extra, alpha = 1, 0.6  # outputs of at most 4 tokens
  limit = 3 + extra
  # Every output the search may return: up to `limit` tokens ending with EOS, never padding.
  non_eos = [t for t in range(5) if t not in (EOS_ID, config.pad_id)]
  candidates = [prefix + (EOS_ID,) for n in range(limit)
                for prefix in itertools.product(non_eos, repeat=n)]
  scores = {c: logprob / float(decoding.length_penalty(jnp.float32(len(c)), alpha))
            for c, logprob in zip(candidates, sequence_logprobs(model, params, inputs,
                                                                candidates))}
  ranked = sorted(scores, key=scores.get, reverse=True)
  ids, beam_scores = translate(model, params, inputs, beam_size=len(candidates), alpha=alpha,
                               extra_length=extra)
  for k in range(3):
    found = tuple(int(t) for t in ids[0, k][:list(ids[0, k]).index(EOS_ID) + 1])
    assert found == ranked[k]
    np.testing.assert_allclose(beam_scores[0, k], scores[ranked[k]], rtol=1e-4)


FIRST_STEPS = np.log([1e-30, 0.5, 0.3, 0.2])  # P(EOS, a, b) = (0.5, 0.3, 0.2); id 0 is padding
RARE_EOS = np.log([1e-30, 1e-6, 0.5, 0.5])


def _toy_search(first_steps, beam_size=2, early_stopping="k_finished"):
  """Beam search over a toy decoder: per sentence, `first_steps` log-probabilities at the first
  two steps, then EOS (almost) surely; alpha 2 (a strong bonus for length), at most 5 tokens."""
  def step(tokens, cache):
    late = jnp.array([-30.0, 0.0, -20.0, -20.0])
    logits = jnp.where(cache["index"] < 2, cache["first_steps"], late)
    return logits, {"index": cache["index"] + 1, "first_steps": cache["first_steps"]}
  rows = jnp.repeat(jnp.asarray(first_steps, jnp.float32), beam_size, axis=0)
  return decoding.beam_search(step, {"index": jnp.array(0), "first_steps": rows},
                              jnp.full([len(first_steps)], 5), beam_size=beam_size, alpha=2.0,
                              max_length=5, eos_id=EOS_ID, early_stopping=early_stopping)


@pytest.mark.parametrize("early_stopping", ["exact", "k_finished"])
def test_k_finished_stops_at_k_hypotheses_and_exact_finds_the_longer_better_one(early_stopping):
  """Two beams, worked by hand from the definition: after two steps `EOS` and `a EOS` have
  finished; `a a` is live and, with the certain EOS of step 3, becomes `a a EOS`, which beats
  `a EOS` once normalized. `k_finished` has stopped by then."""
  a, eos = 2, EOS_ID
  ids, scores = _toy_search([FIRST_STEPS], early_stopping=early_stopping)
  penalty = lambda n: ((5 + n) / 6) ** 2
  second = ([a, eos], np.log(0.5 * 0.3) / penalty(2)) if early_stopping == "k_finished" else (
      [a, a, eos], np.log(0.3 * 0.3) / penalty(3))
  assert [list(ids[0, 0, :1]), list(ids[0, 1, :len(second[0])])] == [[eos], second[0]]
  assert not np.asarray(ids[0, 1, len(second[0]):]).any()
  np.testing.assert_allclose(scores[0], [np.log(0.5), second[1]], rtol=1e-5)


def test_a_sentence_that_ended_keeps_its_hypotheses_while_the_batch_goes_on():
  """With `k_finished`, the first sentence ends after two steps; the second (EOS rare at first)
  goes on, and the first's output stays what it is alone (`a EOS`, not the later `a a EOS`)."""
  alone = _toy_search([FIRST_STEPS])
  together = _toy_search([FIRST_STEPS, RARE_EOS])
  np.testing.assert_array_equal(together[0][0], alone[0][0])
  np.testing.assert_allclose(together[1][0], alone[1][0], rtol=1e-6)
  assert list(together[0][0, 1, :2]) == [2, EOS_ID]
  assert list(together[0][1, 0, :3]) != list(together[0][0, 0, :3])  # the other sentence's own


def test_bad_decode_options():
  with pytest.raises(ValueError, match="config.decode.method must be one of beam, greedy, sample"):
    inference.DecodeOptions(method="nucleus")
  with pytest.raises(ValueError, match=r"config.decode.top_p must be in \(0, 1\]"):
    inference.DecodeOptions(method="sample", top_p=0.0)
  with pytest.raises(ValueError, match=r"config.decode.early_stopping must be one of exact, "
                                       r"k_finished, got 'never'"):
    inference.DecodeOptions(early_stopping="never")


PROBABILITIES = np.array([0.0, 0.05, 0.1, 0.15, 0.3, 0.4])  # id 0 is padding, never drawn


def first_tokens(draws=10_000, seed=0, **options):
  """The first token of `draws` samples from a fixed next-token distribution."""
  logits = jnp.log(jnp.maximum(jnp.asarray(PROBABILITIES, jnp.float32), 1e-30))
  step = lambda tokens, cache: (jnp.tile(logits, (tokens.shape[0], 1)), cache)
  ids = decoding.sample(step, None, jnp.full([draws], 3), max_length=3, eos_id=EOS_ID,
                        rng=jax.random.PRNGKey(seed), **options)
  return np.bincount(np.asarray(ids[:, 0]), minlength=len(PROBABILITIES)) / draws


def expected(weights):
  weights = np.asarray(weights, float)
  return weights / weights.sum()


@pytest.mark.parametrize("options, target", [
    (dict(temperature=1.0), expected(PROBABILITIES)),
    (dict(temperature=0.5), expected(PROBABILITIES**2)),  # p^(1/T)
    (dict(temperature=1.0, top_k=2), expected([0, 0, 0, 0, 0.3, 0.4])),
    (dict(temperature=1.0, top_p=0.6), expected([0, 0, 0, 0, 0.3, 0.4])),  # 0.4 < 0.6 <= 0.7
    (dict(temperature=1.0, top_p=0.75), expected([0, 0, 0, 0.15, 0.3, 0.4])),
])
def test_sampler_frequencies_match_the_distribution(options, target):
  # 10k draws: standard error <= 0.005 per token; 0.02 is four of them.
  np.testing.assert_allclose(first_tokens(**options), target, atol=0.02)


def test_every_batch_and_seed_draws_differently():
  options = inference.DecodeOptions(method="sample", seed=3)
  assert not np.array_equal(options.batch_rng(0), options.batch_rng(1))
  assert not np.array_equal(options.batch_rng(0),
                            inference.DecodeOptions(method="sample", seed=4).batch_rng(0))
  assert not np.array_equal(first_tokens(draws=200, seed=0, temperature=1.0),
                            first_tokens(draws=200, seed=1, temperature=1.0))


def test_no_repeat_ngram_bans_exactly_the_completing_tokens():
  sequences = jnp.array([[5, 6, 7, 5, 6, 0, 0], [5, 6, 7, 5, 6, 0, 0]])
  logprobs = jnp.zeros((2, 9))
  banned = decoding.ban_repeated_ngrams(logprobs, sequences, jnp.array(5), 3)
  # "5 6" was followed by 7: 7 would repeat "5 6 7". Nothing else is banned.
  assert [np.flatnonzero(row < -1).tolist() for row in np.asarray(banned)] == [[7], [7]]
  assert np.array_equal(decoding.ban_repeated_ngrams(logprobs, sequences, jnp.array(5), 2),
                        logprobs.at[:, 7].set(decoding.NEG_INF))  # bigram "6 7"... after 6
  assert np.array_equal(decoding.ban_repeated_ngrams(logprobs, sequences, jnp.array(5), 0),
                        logprobs)


def test_no_repeat_ngram_size_removes_repeats_from_beam_outputs(tiny_model):
  model, params, inputs = tiny_model
  ids, _ = translate(model, params, inputs, no_repeat_ngram_size=2, extra_length=20)
  for hypothesis in ids.reshape(-1, ids.shape[-1]):
    tokens = [int(t) for t in hypothesis if t]
    bigrams = list(zip(tokens, tokens[1:]))
    assert len(bigrams) == len(set(bigrams))
