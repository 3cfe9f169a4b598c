"""Greedy, sampling and beam search: against each other, brute force and the uncached decoder."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import config as configs
from transformer import decoding, inference
from transformer.data.tokenizer import EOS_ID
from transformer.model import Transformer

from helpers import init_params, random_tokens


@pytest.fixture(scope="module")
def tiny_model():
  config = configs.tiny(vocab_size=12, max_len=40)
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


def sequence_logprob(model, params, inputs, sequence, limit):
  """log P(sequence | inputs) by teacher forcing; EOS forced at the limit costs nothing."""
  logits = model.apply({"params": params}, inputs, jnp.asarray([sequence]))
  logprobs = np.asarray(jax.nn.log_softmax(logits[0]))
  terms = [logprobs[i, token] for i, token in enumerate(sequence)]
  if len(sequence) == limit:
    terms[-1] = 0.0
  return float(np.sum(terms))


def test_exhaustive_beam_finds_the_brute_force_best():
  config = configs.tiny(vocab_size=5, max_len=16)
  model, params = init_params(config)
  params = jax.tree.map(lambda p: p * 3.0, params)
  inputs = jnp.array([[3, 4, EOS_ID]])
  extra, alpha = 1, 0.6  # outputs of at most 4 tokens
  limit = 3 + extra
  non_eos = [t for t in range(5) if t not in (EOS_ID, config.pad_id)]  # padding is never output
  candidates = [prefix + (EOS_ID,) for n in range(limit)
                for prefix in itertools.product(non_eos, repeat=n)]
  scores = {c: sequence_logprob(model, params, inputs, c, limit) /
            float(decoding.length_penalty(jnp.float32(len(c)), alpha)) for c in candidates}
  ranked = sorted(scores, key=scores.get, reverse=True)
  ids, beam_scores = translate(model, params, inputs, beam_size=len(candidates), alpha=alpha,
                               extra_length=extra)
  for k in range(3):
    found = tuple(int(t) for t in ids[0, k][:list(ids[0, k]).index(EOS_ID) + 1])
    assert found == ranked[k]
    np.testing.assert_allclose(beam_scores[0, k], scores[ranked[k]], rtol=1e-4)


def test_bad_decode_options():
  with pytest.raises(ValueError, match="config.decode.method must be one of beam, greedy, sample"):
    inference.DecodeOptions(method="nucleus")
