"""Defaults shared by every experiment config; each config file starts from `base_config()`."""

import ml_collections
from ml_collections.config_dict import placeholder


def base_config() -> ml_collections.ConfigDict:
  """All fields with their defaults (the paper's recipe where it has one)."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters, dropout and data order

  # Every field of transformer.config.ModelConfig, defaults = the paper's base model.
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=32000,  # >= config.tokenizer.vocab_size (shared source/target vocabulary)
      target_vocab_size=placeholder(int),  # None: one vocabulary for both sides
      d_model=512,  # model width
      num_heads=8,  # attention heads h
      d_ff=2048,  # feed-forward hidden size
      encoder_layers=6,  # N (encoder)
      decoder_layers=6,  # N (decoder)
      d_k=placeholder(int),  # per-head query/key size (None: d_model / h)
      d_v=placeholder(int),  # per-head value size (None: d_model / h)
      dropout_rate=0.1,  # P_drop: sub-layer outputs and embedding sums (Sec. 5.4)
      attention_dropout_rate=0.0,  # dropout on attention weights (not in the paper)
      max_len=256,  # longest sequence (learned positions; decoding: source + 50)
      share_embeddings=True,  # one matrix for source and target embeddings (Sec. 3.4)
      tie_output_embedding=True,  # ...and the pre-softmax projection
      positional_encoding="sinusoidal",  # sinusoidal | learned | none
      normalization="post",  # post (paper) | pre (+ final LayerNorm)
      activation="relu",  # relu | gelu
      layer_norm_epsilon=1e-6,
      dtype="float32",  # compute dtype (bfloat16 on TPU/GPU)
      param_dtype="float32",  # parameter dtype
      # xla (reference) | jax (jax.nn.dot_product_attention) | blockwise | cudnn (GPU, bf16/fp16)
      attention_kernel="xla",
      attention_block_size=512,  # blockwise: query/key block size (memory O(N * block))
      # xla kernel: Q K^T and the probabilities kept for the backward pass in compute (the
      # compute dtype: halves them in bfloat16 runs; the softmax itself stays float32) | float32
      attention_probs_dtype="compute",
      logits_dtype="float32",  # vocabulary logits: float32 | bfloat16 (log-sum-exp in float32)
      remat_policy="none",  # none | full | dots | dots_no_batch: recompute activations
      scan_layers=False,  # nn.scan over identical layers (compile time independent of N)
      pad_id=0,  # padding (and decoder start) token id
  ))

  config.data = ml_collections.ConfigDict(dict(
      dataset="number_words",  # number_words | parallel_text | a tfds catalog name
      data_dir="",  # where tfds prepares/reads datasets ('' = ~/tensorflow_datasets; gs:// ok)
      source_dir="",  # parallel_text: directory of {split}.{lang} or {split}.tsv files
      source_lang="en",  # the paper translates EN->DE
      target_lang="de",
      carve_from="",  # parallel_text: one split to cut into train/validation/test (Tatoeba)
      generated=ml_collections.ConfigDict(dict(  # number_words: task size
          seed=0, train_size=50_000, validation_size=1_000, test_size=1_000)),
      train_split="train",
      eval_split="validation",  # validation loss/BLEU during training
      test_split="test",  # final evaluation only
      max_train_length=64,  # longer training pairs (in tokens, per side) are dropped
      max_eval_length=256,  # longer evaluation sequences are truncated
      packed_length=64,  # tokens per packed training row (target side)
      packed_inputs_length=0,  # source-side row length (0 = packed_length); match the corpus
      batch_size=64,  # packed rows per global batch (tokens = rows * packed_length)
      eval_batch_size=64,  # sentences per global evaluation batch
      packing_bins=1024,  # rows packed at once (first fit; more bins, fuller rows)
      workers=0,  # Grain worker processes for tokenizing and packing (0: in the trainer)
      read_threads=-1,  # threads reading records ahead (-1: 16 for a gs:// data_dir, else 0)
  ))

  config.tokenizer = ml_collections.ConfigDict(dict(
      vocab_size=32000,  # joint SentencePiece vocabulary
      model_type="unigram",  # unigram | bpe
      sample_size=1_000_000,  # training pairs sampled to train the tokenizer
      character_coverage=1.0,  # 0.9995 for Chinese/Japanese pieces merged (han_characters=merge)
      byte_fallback=False,  # unknown characters as UTF-8 bytes (needs vocab_size >= 259)
      normalization="nmt_nfkc",  # SentencePiece rule; identity keeps full-width punctuation
      han_characters="merge",  # merge: multi-character Chinese pieces | single: one per character
      # joint: one vocabulary for both languages (the paper) | separate: a source and a target
      # model, vocab_size ids together, in one id space (shared embeddings then hold both)
      vocabularies="joint",
  ))

  config.train = ml_collections.ConfigDict(dict(
      num_steps=100_000,  # optimizer updates (base: 100k, big: 300k)
      warmup_steps=4000,  # Sec. 5.3
      learning_rate_factor=1.0,  # multiplies d_model^-0.5 * min(step^-0.5, step*warmup^-1.5)
      # >0: the rate falls linearly to zero over the last N steps (not in the paper; for runs
      # compared at a fixed budget, e.g. experiments/sweeps/table3.py:cpu_converged)
      cooldown_steps=0,
      adam_b1=0.9,  # Sec. 5.3
      adam_b2=0.98,
      adam_eps=1e-9,
      weight_decay=0.0,  # decoupled (AdamW); the paper uses none
      grad_clip_norm=0.0,  # global-norm clipping; 0 = off (the paper uses none)
      grad_accum_steps=1,  # optax.MultiSteps: batches per update
      label_smoothing=0.1,  # Sec. 5.4
      # >1: the loss projects the vocabulary logits for L / loss_chunks target positions at a
      # time (recomputed in the backward pass), so [B, L, N] logits never exist whole
      loss_chunks=1,
      log_every_steps=100,  # console/JSONL/TensorBoard metrics
      eval_every_steps=1000,  # validation loss/perplexity
      eval_max_examples=2000,  # validation examples used during training
      checkpoint_every_steps=1000,  # asynchronous Orbax saves (and at the end)
      keep_checkpoints=5,  # latest kept (the paper averages the last 5 / 20)
      best_metric="eval_loss",  # metric naming the best checkpoint (kept as well)
      best_mode="min",  # min | max
      bleu_every_steps=0,  # validation BLEU (beam search) every N steps; 0 = only at the end
      bleu_max_examples=500,  # fixed validation subset for BLEU during training
      test_at_end=False,  # decode the test split after the last step and print its BLEU
      profile_steps=0,  # >0: jax.profiler trace of that many steps after step 10
      peak_flops=0.0,  # per device, for MFU; 0 = known accelerator or a measured CPU matmul
      # Dropout masks: threefry2x32 (JAX's default, the same on any mesh) | rbg | unsafe_rbg
      # (XLA's RngBitGenerator: far cheaper on CPU/GPU, masks depend on the mesh).
      prng_impl="threefry2x32",
      # Persistent XLA compilation cache ('' = WORKDIR/compilation_cache; gs:// accepted; 'off'
      # disables it): a run restarted after preemption loads its compiled steps instead of
      # compiling them again.
      compilation_cache_dir="",
  ))

  config.decode = ml_collections.ConfigDict(dict(
      method="beam",  # beam | greedy | sample
      beam_size=4,  # Sec. 6.1
      alpha=0.6,  # length penalty ((5 + len) / 6)^alpha, Sec. 6.1
      extra_length=50,  # maximum output length = input length + 50, Sec. 6.1
      temperature=1.0,  # sample: softmax temperature
      top_k=0,  # sample: keep the k most likely tokens (0 = all)
      top_p=1.0,  # sample: keep the smallest set of tokens with this probability (nucleus)
      seed=0,  # sample: each batch (and process) folds its number into this seed
      no_repeat_ngram_size=0,  # >0: never repeat an n-gram of this size within a hypothesis
      use_cache=True,  # key/value cache (False re-runs the decoder per step; for comparison)
      # beam: exact (stop once no live beam can win; tensor2tensor, Flax) | k_finished (once
      # beam_size hypotheses have ended; fairseq), much faster on a batch
      early_stopping="exact",
  ))

  config.eval = ml_collections.ConfigDict(dict(
      split="",  # --mode=evaluate: a dataset split ('' = config.data.test_split)
      dataset="",  # --mode=evaluate on another dataset ('' = config.data.dataset), e.g. train on
      source_dir="",  # wmt17_translate/de-en, test on wmt14_translate/de-en's newstest2014
      source_file="",  # ...or a pair of line-aligned files instead of a split
      reference_file="",
      # sacrebleu (detokenized, 13a/zh) | paper (Moses-tokenized, compounds split, as the paper)
      # | multi30k (punctuation-normalized, Moses-tokenized, lowercased); see bleu_styles.py
      bleu_style="sacrebleu",
      extra_bleu_styles="",  # --mode=evaluate: also score the same hypotheses in these (a,b)
      num_average=5,  # --mode=average: last N checkpoints (Sec. 6.1: 5 base, 20 big)
      average_until_step=0,  # --mode=average: >0 averages the last N at or before this step
      nbest=1,  # --mode=translate: print the n best hypotheses with scores (<= beam_size)
      attention_layers=(0, -1),  # --mode=attention: layers and heads to draw
      attention_heads=(0,),
  ))

  config.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # data parallelism (-1: all devices not used by the other axes)
      fsdp=1,  # parameters and optimizer state sharded along d_model
      tensor=1,  # Megatron-style: heads and d_ff split
      dcn_data=1,  # multi-slice: data parallelism across slices (data/fsdp/tensor: per slice)
  ))
  return config


def apply_gpu_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The NVIDIA GPU recipe of a WMT config (`wmt14_base.py:gpu`), one process per node.

  bfloat16 compute with float32 parameters and cuDNN's fused attention; the paper's batch of 96
  rows x 256 tokens per side is kept: `--mode=compile --topology=h100` puts the base train step
  at 20.7 GiB and big at 32.4 GiB per GPU without rematerialization (compiled with the `jax`
  kernel, an upper bound for cuDNN's), so one 80 GB or 141 GB GPU holds it and remat stays off.
  On several GPUs the rows are split over them (data parallelism; 96 divides by 1-8, 12, 16, 24,
  32, 48 and 96 GPUs). The XLA GPU flags are the trainer's (`transformer/gpus.py`).
  """
  config.model.update(dict(dtype="bfloat16", param_dtype="float32", attention_kernel="cudnn",
                           remat_policy="none"))
  # data_dir "": ~/tensorflow_datasets, or --config.data.data_dir
  config.data.update(dict(data_dir="", batch_size=96))
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  return config
