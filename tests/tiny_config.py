"""A tiny training config for tests: `--config=tests/tiny_config.py`."""

import ml_collections

from experiments.configs import smoke


def get_config() -> ml_collections.ConfigDict:
  """The smoke config shrunk to seconds per run."""
  config = smoke.get_config()
  config.data.generated.update(dict(train_size=2000, validation_size=40, test_size=40))
  # The 40 validation (and test) sentences are one evaluation batch with 8 padding rows: each
  # run compiles one eval and one decode program, not one per batch width.
  config.data.update(dict(batch_size=16, packed_length=32, max_train_length=32,
                          eval_batch_size=48))
  # One layer per stack: each program compiles in about two thirds of the time (the layer code
  # is the same for every layer; tests/test_model.py checks stacks of several).
  config.model.update(dict(d_model=32, d_ff=64, vocab_size=128, encoder_layers=1,
                           decoder_layers=1))
  config.tokenizer.update(dict(vocab_size=128, sample_size=2000))
  # No test-split decode at the end (tests that check it turn it on): seconds in every run.
  config.train.update(dict(num_steps=20, warmup_steps=10, log_every_steps=1,
                           eval_every_steps=10, checkpoint_every_steps=10, eval_max_examples=40,
                           test_at_end=False))
  return config
