"""The paper's big model on WMT14 EN->DE (Table 3 row "big"): 1024/16/4096, dropout 0.3,
300k steps, the last 20 checkpoints averaged. `wmt14_big.py:gpu` is the NVIDIA GPU variant."""

import ml_collections

from experiments.configs import wmt14_base


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Big model, paper recipe; `variant` "gpu" for NVIDIA GPUs."""
  config = wmt14_base.get_config(variant)
  config.model.update(dict(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3))
  config.train.update(dict(num_steps=300_000, keep_checkpoints=20))
  config.eval.num_average = 20  # Sec. 6.1
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  return config
