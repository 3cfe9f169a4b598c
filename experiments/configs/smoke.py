"""Smoke run: a tiny model on the generated number-words task (no download), CPU in minutes."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The README's main job."""
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      preset="tiny",  # base | big | tiny; the fields below override it
      vocab_size=64,  # shared source/target vocabulary
      d_model=64,  # model width
      num_heads=4,  # attention heads
      d_ff=256,  # feed-forward hidden size
      encoder_layers=2,  # N for the encoder
      decoder_layers=2,  # N for the decoder
      dropout_rate=0.1,  # residual and embedding dropout (Sec. 5.4)
      max_len=64,  # longest sequence (learned positions, decoding)
  ))
  config.seed = 0  # initialization and dropout
  return config
