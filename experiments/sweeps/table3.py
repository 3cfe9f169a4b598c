"""The paper's Table 3 (variations on the base model) as named config overrides.

Three scales: `tpu` uses the paper's own sizes on WMT14 (`experiments/configs/wmt14_base.py`);
`cpu` (default) scales widths by 1/4 and depth by 1/2 and trains 600 steps of 1,024-token
batches a point (~1.25 epochs of Multi30k), so that the whole sweep runs in 70-80 minutes on a
2-core CPU (`--parallel=2`): enough to rank the variants early in training, not to reach their
final quality (experiments/results/README.md). `cpu_converged` trains the same points for
10,000 steps (~21 epochs: where base's validation perplexity falls by less than 1% per 500
steps; a raised budget resumes finished points from their last checkpoint), averages the last 5
checkpoints (100 steps apart; Sec. 6.1) and decodes the whole `val` split with beam 4: the
quality each variant reaches. A campaign over several sessions (~2 hours a point, two at a
time, with nothing else running); results.jsonl rows carry it as `final_eval`.
Rows keep the paper's letters: (A) heads with d_k = d_v = d_model / h (constant computation),
(B) smaller d_k, (C) size, (D) dropout and label smoothing, (E) learned positional embedding.
"""

from __future__ import annotations

from typing import Any

SCALES = {
    # d_model, d_ff, layers, steps, config file, fixed overrides
    "tpu": dict(d_model=512, d_ff=2048, layers=6, config="experiments/configs/wmt14_base.py",
                fixed={}),
    "cpu": dict(d_model=128, d_ff=512, layers=3, config="experiments/configs/multi30k.py",
                # 5-14 minutes a point (two at a time on 2 cores) with tokenizer, compilation and
                # evaluation. Half the paper's learning-rate factor: at this width and warm-up
                # the full one peaks at 5e-3, where the deeper post-LN points diverge.
                fixed={"model.vocab_size": 4000, "tokenizer.vocab_size": 4000,
                       "train.num_steps": 600, "train.warmup_steps": 300,
                       "train.learning_rate_factor": 0.5,
                       "train.eval_every_steps": 150, "train.checkpoint_every_steps": 600,
                       "train.bleu_every_steps": 0, "train.bleu_max_examples": 300,
                       "train.test_at_end": False, "data.batch_size": 4,
                       # 4 rows of 256 tokens, whatever multi30k.py's own rows are
                       "data.packed_length": 256, "data.packed_inputs_length": 248,
                       "train.prng_impl": "rbg"}),
    "cpu_converged": dict(d_model=128, d_ff=512, layers=3, config="experiments/configs/multi30k.py",
                          fixed={"model.vocab_size": 4000, "tokenizer.vocab_size": 4000,
                                 "train.num_steps": 10000, "train.warmup_steps": 300,
                                 "train.learning_rate_factor": 0.5,
                                 "train.eval_every_steps": 250,
                                 "train.checkpoint_every_steps": 100,
                                 "train.keep_checkpoints": 5,
                                 # dev BLEU against steps (bleu_curves.png), on the same 300
                                 # sentences as the 600-step table
                                 "train.bleu_every_steps": 500,
                                 "train.bleu_max_examples": 300,
                                 "train.test_at_end": False, "data.batch_size": 4,
                                 "data.packed_length": 256,
                                 "data.packed_inputs_length": 248,
                                 "train.prng_impl": "rbg"},
                          # Sec. 6.1: average the last checkpoints, then beam 4 on all of val.
                          finish=[["--mode=average", "--config.eval.num_average=5"],
                                  ["--mode=evaluate", "--checkpoint_dir={workdir}/averaged",
                                   "--config.eval.split=val"]]),
}


# The paper's Table 3 (newstest2013, base model, 100k steps): dev perplexity and BLEU per row.
PAPER = {
    "base": (4.92, 25.8), "A_h1": (5.29, 24.9), "A_h4": (5.00, 25.5), "A_h16": (4.91, 25.8),
    "A_h32": (5.01, 25.4), "B_dk16": (5.16, 25.1), "B_dk32": (5.01, 25.4),
    "C_N2": (6.11, 23.7), "C_N4": (5.19, 25.3), "C_N8": (4.88, 25.5), "C_d256": (5.75, 24.5),
    "C_d1024": (4.66, 26.0), "C_ff1024": (5.12, 25.4), "C_ff4096": (4.75, 26.2),
    "D_drop0.0": (5.77, 24.6), "D_drop0.2": (4.95, 25.5), "D_ls0.0": (4.67, 25.3),
    "D_ls0.2": (5.47, 25.7), "E_learned": (4.92, 25.7),
}


def _heads(h: int, d_model: int) -> dict[str, Any]:
  return {"model.num_heads": h, "model.d_k": d_model // h, "model.d_v": d_model // h}


def get_sweep(scale: str = "cpu") -> dict[str, Any]:
  """The sweep: a base config file and a list of named points (config overrides)."""
  if scale not in SCALES:
    raise ValueError(f"table3 sweep: scale must be one of {', '.join(SCALES)}, got {scale!r}")
  s = SCALES[scale]
  d, f, n = s["d_model"], s["d_ff"], s["layers"]
  base = {"model.d_model": d, "model.d_ff": f, "model.encoder_layers": n,
          "model.decoder_layers": n, **_heads(8, d), "model.dropout_rate": 0.1,
          "train.label_smoothing": 0.1, "model.positional_encoding": "sinusoidal",
          **s["fixed"]}
  variants = {
      "base": {},
      # (A) number of heads, computation kept constant
      "A_h1": _heads(1, d), "A_h4": _heads(4, d), "A_h16": _heads(16, d), "A_h32": _heads(32, d),
      # (B) attention key size
      "B_dk16": {"model.d_k": d // 32}, "B_dk32": {"model.d_k": d // 16},
      # (C) model size
      "C_N2": {"model.encoder_layers": max(n // 3, 1), "model.decoder_layers": max(n // 3, 1)},
      "C_N4": {"model.encoder_layers": 2 * n // 3, "model.decoder_layers": 2 * n // 3},
      "C_N8": {"model.encoder_layers": 4 * n // 3, "model.decoder_layers": 4 * n // 3},
      "C_d256": {"model.d_model": d // 2, **_heads(8, d // 2)},
      "C_d1024": {"model.d_model": 2 * d, **_heads(8, 2 * d)},
      "C_ff1024": {"model.d_ff": f // 2},
      "C_ff4096": {"model.d_ff": 2 * f},
      # (D) regularization
      "D_drop0.0": {"model.dropout_rate": 0.0}, "D_drop0.2": {"model.dropout_rate": 0.2},
      "D_ls0.0": {"train.label_smoothing": 0.0}, "D_ls0.2": {"train.label_smoothing": 0.2},
      # (E) positional embedding instead of sinusoids
      "E_learned": {"model.positional_encoding": "learned"},
  }
  points = [{"name": name, "overrides": {**base, **changes}} for name, changes in variants.items()]
  reference = {name: {"perplexity": ppl, "bleu": bleu} for name, (ppl, bleu) in PAPER.items()}
  return {"name": f"table3-{scale}", "config": s["config"], "points": points,
          "reference": reference, "finish": s.get("finish", [])}
