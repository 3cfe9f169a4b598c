"""Why Table 3's C_N8 (4 + 4 post-LN layers at CPU scale) converges far below base.

    python -m experiments.sweep --sweep=experiments/sweeps/depth_diagnostic.py \
        --root=runs/table3_converged --parallel=2

At `cpu_converged` scale C_N8 ends at a higher *training* loss than the 1- and 2-layer points
(experiments/results/README.md), which points at optimisation rather than overfitting. Two
candidate causes, each tested by one change to C_N8: the post-LN residual path (C_N8_pre: the same
stack with pre-LN, the fix of Xiong et al. 2020) and the learning rate (C_N8_lr0.25: half the peak
rate). base_pre separates "pre-LN helps every depth" from "pre-LN fixes depth". Run in the Table 3
root: base and C_N8 are its finished points (same names and budget, so the runner skips them) and
the report puts all rows in one table.
"""

from __future__ import annotations

from typing import Any

from experiments import sweep
from experiments.sweeps import table3


def get_sweep(scale: str = "cpu_converged") -> dict[str, Any]:
  """base and C_N8 of Table 3 at `scale`, plus pre-LN and lower-learning-rate variants."""
  table = table3.get_sweep(scale)
  points = {point["name"]: point for point in table["points"]}
  base, deep = points["base"]["overrides"], points["C_N8"]["overrides"]
  base_config = sweep.point_config(sweep.load_config(table["config"]), points["base"])
  half_rate = base_config.train.learning_rate_factor / 2
  variants = {
      "base": base,
      "C_N8": deep,
      "base_pre": {**base, "model.normalization": "pre"},
      "C_N8_pre": {**deep, "model.normalization": "pre"},
      f"C_N8_lr{half_rate:g}": {**deep, "train.learning_rate_factor": half_rate},
  }
  return {"name": f"depth-diagnostic-{scale}", "config": table["config"],
          "points": [{"name": name, "overrides": changes} for name, changes in variants.items()],
          "reference": {name: table["reference"][name] for name in ("base", "C_N8")},
          "finish": table["finish"]}
