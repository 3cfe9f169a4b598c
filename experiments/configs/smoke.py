"""Smoke run: a tiny model on the generated number-words task (no download), CPU in minutes."""

import ml_collections

from experiments.configs import common


def get_config() -> ml_collections.ConfigDict:
  """The README's main job."""
  config = common.base_config()
  config.model.update(dict(
      preset="tiny",
      vocab_size=128,  # = tokenizer.vocab_size
      d_model=64,
      num_heads=4,
      d_ff=256,
      encoder_layers=2,
      decoder_layers=2,
      dropout_rate=0.1,
      max_len=64,
  ))
  config.data.generated.update(dict(train_size=20_000, validation_size=500, test_size=500))
  config.data.update(dict(max_train_length=32, max_eval_length=64, packed_length=64,
                          batch_size=32, eval_batch_size=100, shuffle_buffer=20_000))
  config.tokenizer.update(dict(vocab_size=128, sample_size=20_000))
  return config
