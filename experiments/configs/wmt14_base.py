"""The paper's base model on WMT14 EN->DE (Sec. 5, Table 3 row "base"), for TPU VMs.

tfds `wmt14_translate/de-en` (train ~4.5M pairs; validation = newstest2013; test = newstest2014),
a shared 37k BPE vocabulary, ~25k source + 25k target tokens per batch, 100k steps, Adam
(0.9, 0.98, 1e-9) with the paper's warmup schedule, dropout 0.1, label smoothing 0.1, bfloat16
compute with float32 parameters, Q K^T / attention probabilities and the vocabulary logits in
bfloat16 (their softmaxes in float32). `wmt14_base.py:gpu` is the NVIDIA GPU variant
(`common.apply_gpu_variant`: cuDNN attention, local data).
"""

import ml_collections

from experiments.configs import common


VARIANTS = ("", "tpu", "gpu")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """Base model, paper recipe; `variant` "gpu" for NVIDIA GPUs ("" or "tpu": Cloud TPU)."""
  if variant not in VARIANTS:
    raise ValueError(f"wmt14 configs: variant must be one of tpu, gpu; got {variant!r}")
  config = common.base_config()
  config.model.update(dict(
      vocab_size=37000,  # Sec. 5.1: shared source-target vocabulary of about 37000 tokens
      max_len=512,  # longest evaluation source (256) + 50 decoding steps, with room
      dtype="bfloat16",
      param_dtype="float32",
      # bfloat16 logits (log-sum-exp in float32): faster in the TPU cost model
      # (benchmarks/results/tpu_compile/before_after.md)
      logits_dtype="bfloat16",
  ))
  config.data.update(dict(
      dataset="wmt14_translate/de-en", data_dir="gs://YOUR_BUCKET/tensorflow_datasets",
      source_lang="en", target_lang="de", eval_split="validation", test_split="test",
      max_train_length=256, max_eval_length=256, packed_length=256,
      batch_size=96,  # 96 rows x 256 = 24,576 tokens per side (Sec. 5.1: ~25,000)
      eval_batch_size=256,
      workers=16))  # Grain processes per host: see benchmarks/README.md, input pipeline
  config.tokenizer.update(dict(vocab_size=37000, model_type="bpe", sample_size=2_000_000))
  config.train.update(dict(
      num_steps=100_000, warmup_steps=4000, label_smoothing=0.1, log_every_steps=100,
      eval_every_steps=2000, checkpoint_every_steps=2000, keep_checkpoints=5,
      bleu_every_steps=10_000, bleu_max_examples=1000, best_metric="eval_bleu",
      best_mode="max", test_at_end=True))
  return common.apply_gpu_variant(config) if variant == "gpu" else config
