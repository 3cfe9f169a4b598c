"""The paper's Table 3 (variations on the base model) as named config overrides.

Two scales: `tpu` uses the paper's own sizes on WMT14 (`experiments/configs/wmt14_base.py`);
`cpu` (default) scales widths by 1/4 and depth by 1/2 and trains 500 steps a point, so that
the whole sweep runs on Multi30k in a little over two hours on a 2-core CPU. Rows keep the paper's letters:
(A) heads with d_k = d_v = d_model / h (constant computation), (B) smaller d_k, (C) size,
(D) dropout and label smoothing, (E) learned positional embedding.
"""

from __future__ import annotations

from typing import Any

SCALES = {
    # d_model, d_ff, layers, steps, config file, fixed overrides
    "tpu": dict(d_model=512, d_ff=2048, layers=6, config="experiments/configs/wmt14_base.py",
                fixed={}),
    "cpu": dict(d_model=128, d_ff=512, layers=3, config="experiments/configs/multi30k.py",
                # Measured 1.4 steps/s for the base point on 2 cores: ~7 minutes a point with
                # compilation and evaluation, ~2.2 hours for the 19 points.
                fixed={"model.vocab_size": 4000, "tokenizer.vocab_size": 4000,
                       "train.num_steps": 500, "train.warmup_steps": 200,
                       "train.eval_every_steps": 250, "train.checkpoint_every_steps": 500,
                       "train.bleu_every_steps": 0, "train.bleu_max_examples": 500,
                       "train.test_at_end": False, "data.batch_size": 8}),
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
  return {"name": f"table3-{scale}", "config": s["config"], "points": points}
