"""Smoke run: a tiny model on the generated number-words task (no download), CPU in minutes."""

import ml_collections

from experiments.configs import common


def get_config() -> ml_collections.ConfigDict:
  """The README's main job."""
  config = common.base_config()
  config.model.update(dict(
      vocab_size=128,  # = tokenizer.vocab_size
      d_model=64,
      num_heads=4,
      d_ff=256,
      encoder_layers=2,
      decoder_layers=2,
      dropout_rate=0.1,
      max_len=160,  # longest source (96) + 50 extra decoding steps fit
  ))
  config.data.generated.update(dict(train_size=20_000, validation_size=500, test_size=500))
  config.data.update(dict(max_train_length=64, max_eval_length=96, packed_length=128,
                          batch_size=16, eval_batch_size=100))
  config.tokenizer.update(dict(vocab_size=128, sample_size=20_000))
  config.train.update(dict(num_steps=1500, warmup_steps=200, log_every_steps=100,
                           eval_every_steps=500, checkpoint_every_steps=500,
                           eval_max_examples=500, bleu_max_examples=200, test_at_end=True))
  return config
