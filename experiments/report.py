"""A sweep's comparison, laid out like the paper's Table 3, plus plots.

    python -m experiments.report --root=DIR [--output=DIR] [--early_root=DIR]

Reads `ROOT/results.jsonl` (the curves from each row's `validation` history, or from the
point's `metrics.jsonl` for rows recorded without one); writes
`report.md`, `bleu_vs_params.png`, `validation_curves.png` and `bleu_curves.png` (validation
BLEU against steps, for points that measure it during training).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import numpy as np
from etils import epath

from experiments import sweep
from transformer import plotting
from transformer import workdir as workdir_lib

plt = plotting.pyplot()  # the report's job is its plots

# Table 3's columns and two of ours (header -> override key); a column no row sets is left out.
COLUMNS = [("N", "model.encoder_layers"), ("d_model", "model.d_model"), ("d_ff", "model.d_ff"),
           ("h", "model.num_heads"), ("d_k", "model.d_k"), ("d_v", "model.d_v"),
           ("P_drop", "model.dropout_rate"), ("eps_ls", "train.label_smoothing"),
           ("PE", "model.positional_encoding"), ("LN", "model.normalization"),
           ("lr factor", "train.learning_rate_factor"), ("steps", "train.num_steps")]
# 19 variants outnumber the default 10-colour cycle: tab20's ten strong colours, then their light
# twins (neighbours in the table never get a colour and its twin).
PALETTE = plt.get_cmap("tab20").colors[0::2] + plt.get_cmap("tab20").colors[1::2]
# A row differs from base only when its gap (perplexity or BLEU) exceeds this many seed spreads (the
# larger of the row's and base's); a row inside it is a tie.
TIE_FACTOR = 2.0
# A point that ties base on either metric is run with this many seeds before its tie is called.
SEEDS_FOR_TIES = 3
COMPARED = ("eval_perplexity", "eval_bleu")


def read_results(root: str) -> list[dict[str, Any]]:
  """The rows of `results.jsonl`, the last one per point winning.

  A row with a `final_eval` (the sweep's finish commands: averaged checkpoints decoded on the
  whole validation split) reports that BLEU; the BLEU measured during training stays as
  `training_bleu`.
  """
  path = os.path.join(root, sweep.RESULTS)
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"{path}: no sweep results there")
  return [{**row, "training_bleu": row.get("eval_bleu"), "eval_bleu": row["final_eval"]["bleu"]}
          if (row.get("final_eval") or {}).get("bleu") is not None else row
          for row in sweep.recorded_rows(root).values()]


def seed_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """The rows of each point, its seed repeats (`NAME@seedS`) with it, keyed by the point's name."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(row["point"].split("@seed")[0], []).append(row)
  return groups


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per point, its seed repeats folded in: means, sample std, count."""
  folded = []
  for name, members in seed_groups(rows).items():
    row = {**members[0], "point": name, "seeds": len(members),
           "overrides": {k: v for k, v in members[0]["overrides"].items() if k != "seed"}}
    for key in ("eval_perplexity", "eval_bleu", "wall_seconds"):
      values = [m[key] for m in members if m.get(key) is not None]
      row[key] = float(np.mean(values)) if values else None
      row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    folded.append(row)
  return folded


def _is_tie(row: dict[str, Any], base: dict[str, Any], key: str) -> bool:
  """Whether `row`'s `key` is within TIE_FACTOR x the larger of its and base's seed spreads of
  base (never when neither has a spread or either value is missing)."""
  if row.get(key) is None or base.get(key) is None:
    return False
  spread = max(row.get(f"{key}_std") or 0.0, base.get(f"{key}_std") or 0.0)
  return abs(row[key] - base[key]) < TIE_FACTOR * spread


def _first_seed(members: list[dict[str, Any]]) -> dict[str, Any]:
  """The member run with the lowest seed (the one a sweep runs first)."""
  return min(members, key=lambda row: row["overrides"].get("seed", 0))


def points_needing_seeds(rows: list[dict[str, Any]]) -> list[str]:
  """Points on fewer than SEEDS_FOR_TIES seeds whose first seed's perplexity or BLEU tied base,
  or whose mean ties it now (see `_is_tie`): such a difference is called on SEEDS_FOR_TIES seeds
  only, even if a second seed has moved it past the threshold (none is named while base has no
  spread and the row none of its own)."""
  folded = aggregate(rows)
  base = next((r for r in folded if r["point"] == "base"), None)
  if base is None:
    return []
  members = seed_groups(rows)
  return [row["point"] for row in folded if row is not base and row["seeds"] < SEEDS_FOR_TIES
          and any(_is_tie(row, base, key) or _is_tie(_first_seed(members[row["point"]]), base, key)
                  for key in COMPARED)]


def _fmt(value: Any, digits: int = 2) -> str:
  if value is None:
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _with_spread(row: dict[str, Any], key: str, digits: int) -> str:
  spread = row.get(f"{key}_std")
  text = _fmt(row.get(key), digits)
  return text if spread is None else f"{text} ± {spread:.{digits}f}"


def _change(row: dict[str, Any], base: dict[str, Any], key: str, digits: int) -> str:
  """`key`'s difference to base, marked '(tie)' as `_is_tie` decides."""
  if row is base or row.get(key) is None or base.get(key) is None:
    return ""
  change = row[key] - base[key]
  return f"{change:+.{digits}f}" + (" (tie)" if _is_tie(row, base, key) else "")


def setting(row: dict[str, Any], key: str) -> Any:
  """A row's value for a dotted config `key`: its override, else its recorded full config's value
  (None for a row recorded without one)."""
  if key in row["overrides"]:
    return row["overrides"][key]
  value: Any = row.get("config") or {}
  for part in key.split("."):
    value = value.get(part) if isinstance(value, dict) else None
  return value


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """Table 3 layout: the base row in full (a setting it leaves at the config's value shows that
  value), other rows only what they change; seed repeats are folded into mean ± sample std, and
  a difference inside TIE_FACTOR spreads is a tie."""
  rows = aggregate(rows)
  base = next((r for r in rows if r["point"] == "base"), rows[0])
  with_reference = any(row.get("reference") for row in rows)
  columns = [(name, key) for name, key in COLUMNS
             if any(row["overrides"].get(key) is not None for row in rows)]
  header = ["", *[name for name, _ in columns], "seeds", "PPL (dev)", "BLEU (dev)", "PPL vs base",
            "BLEU vs base",
            *(["ref. PPL", "ref. BLEU"] if with_reference else []), "params x10^6", "wall min"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["point"]]
    for _, key in columns:
      value = setting(row, key)
      changed = row is base or value != setting(base, key)
      cells.append(_fmt(value) if changed and value is not None else "")
    cells += [str(row["seeds"]), _with_spread(row, "eval_perplexity", 2),
              _with_spread(row, "eval_bleu", 1), _change(row, base, "eval_perplexity", 2),
              _change(row, base, "eval_bleu", 1)]
    if with_reference:
      reference = row.get("reference") or {}
      cells += [_fmt(reference.get("perplexity")), _fmt(reference.get("bleu"), 1)]
    cells += [f"{row['params'] / 1e6:.1f}",
              _fmt(row.get("wall_seconds", 0.0) / 60, 1)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def label_heights(points: list[tuple[float, float]], widths: list[float],
                  gap: float) -> list[float]:
  """Heights for labels that start at their (x, y) point and run `widths` to the right, such
  that labels whose horizontal extents overlap lie at least `gap` apart: each label, from the
  lowest point up, rises from its point's height only as far as it must to clear those placed."""
  heights = [y for _, y in points]
  placed: list[int] = []
  for index in sorted(range(len(points)), key=lambda i: points[i][1]):
    x = points[index][0]
    blocking = [other for other in placed
                if x < points[other][0] + widths[other] and points[other][0] < x + widths[index]]
    for other in sorted(blocking, key=lambda i: heights[i]):
      if abs(heights[index] - heights[other]) < gap:
        heights[index] = heights[other] + gap
    placed.append(index)
  return heights


def plot_bleu_vs_params(rows: list[dict[str, Any]], path: str,
                        early_rows: list[dict[str, Any]] | None = None) -> None:
  """BLEU (dev) against parameter count, one labelled point per variant; with `early_rows` (the
  same points from a shorter sweep) each variant's early BLEU too, hollow, joined to its own.
  Labels that would overlap (row A's variants all have base's size) are stacked apart."""
  figure, axis = plt.subplots(figsize=(7, 4.5))
  early = {row["point"]: row for row in aggregate(early_rows or [])
           if row.get("eval_bleu") is not None}
  drawn = [row for row in aggregate(rows) if row.get("eval_bleu") is not None]
  points = [(row["params"] / 1e6, row["eval_bleu"]) for row in drawn]
  colors = [PALETTE[index % len(PALETTE)] for index in range(len(drawn))]
  for row, (params, bleu), color in zip(drawn, points, colors):
    axis.errorbar(params, bleu, yerr=row.get("eval_bleu_std"), fmt="o", capsize=3, color=color)
    before = early.get(row["point"])
    if before is not None:
      axis.plot([params, params], [before["eval_bleu"], bleu], color=color,
                linewidth=0.6, alpha=0.5)
      axis.errorbar(params, before["eval_bleu"], yerr=before.get("eval_bleu_std"), fmt="o",
                    mfc="none", color=color, capsize=2)
  axis.margins(x=0.12)  # room right of the last column for its labels
  (x_low, x_high), (y_low, y_high) = axis.get_xlim(), axis.get_ylim()
  gap, char_width = 0.035 * (y_high - y_low), 0.011 * (x_high - x_low)
  heights = label_heights(points, [char_width * (len(row["point"]) + 2) for row in drawn], gap)
  if heights:
    axis.set_ylim(y_low, max(y_high, max(heights) + gap))  # labels only ever rise
  for row, (params, bleu), height, color in zip(drawn, points, heights, colors):
    axis.annotate(row["point"], (params, bleu), xytext=(params + 0.012 * (x_high - x_low), height),
                  fontsize=7, va="center", color=color,
                  arrowprops=dict(arrowstyle="-", linewidth=0.5, color=color)
                  if height != bleu else None)
  axis.set_xlabel("parameters (millions)")
  axis.set_ylabel("BLEU (dev)")
  axis.set_title("Table 3 variants: BLEU against size"
                 + (" (hollow: the early sweep)" if early else ""))
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def validation_records(root: str, row: dict[str, Any]) -> list[dict[str, Any]]:
  """A point's validation records: the row's own `validation` history where it carries one
  (it outlives the run directory), else the point's metrics.jsonl under `root`, else none."""
  if row.get("validation"):
    return row["validation"]
  workdir = os.path.join(root, row["point"])
  if not epath.Path(workdir_lib.metrics(workdir)).exists():
    return []
  return sweep.validation_history(workdir_lib.read_metrics(workdir))


def plot_curves(root: str, rows: list[dict[str, Any]], path: str,
                metric: str = "eval_perplexity") -> list[str]:
  """A validation metric (perplexity, or BLEU where the points measured it during training)
  against training step for every variant; returns the points drawn."""
  figure, axis = plt.subplots(figsize=(7, 4.5))
  plotted = []
  for index, row in enumerate(rows):
    curve = sorted((p["step"], p[metric]) for p in validation_records(root, row)
                   if p.get(metric) is not None)
    if curve:
      axis.plot(*zip(*curve), label=row["point"], color=PALETTE[index % len(PALETTE)],
                linestyle=("-", "--")[index // len(PALETTE) % 2],
                linewidth=2 if row["point"] == "base" else 1)
      plotted.append(row["point"])
  axis.set_xlabel("step")
  axis.set_ylabel({"eval_perplexity": "validation perplexity",
                   "eval_bleu": "validation BLEU (subset, beam 4)"}.get(metric, metric))
  if plotted:
    if metric == "eval_perplexity":
      axis.set_yscale("log")
    axis.legend(fontsize=6, ncol=2)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return plotted


def table_order(point: str) -> tuple[Any, ...]:
  """Sort key: base first, then by name with numbers compared as numbers (A_h4 before A_h16)."""
  return (point != "base", *(int(part) if part.isdigit() else part
                             for part in re.split(r"(\d+)", point)))


def write_report(root: str, output: str | None = None, early_root: str | None = None) -> str:
  """Writes report.md and the plots (into `output`, default the root if it is local, else
  ./sweep_report); `early_root`, a shorter sweep of the same points, is drawn beside it in
  bleu_vs_params.png. Returns the markdown path."""
  output = output or (root if "://" not in root else "sweep_report")
  os.makedirs(output, exist_ok=True)
  # Points finish in any order with --parallel: sorted back into the paper's letters.
  rows = sorted(read_results(root), key=lambda row: table_order(row["point"]))
  early_rows = read_results(early_root) if early_root else None
  plot_bleu_vs_params(rows, os.path.join(output, "bleu_vs_params.png"), early_rows)
  plot_curves(root, rows, os.path.join(output, "validation_curves.png"))
  plot_curves(root, rows, os.path.join(output, "bleu_curves.png"), metric="eval_bleu")
  path = os.path.join(output, "report.md")
  averaged = any(row.get("final_eval") for row in rows)
  notes = ["BLEU (dev): " + ("the averaged checkpoint decoded on the whole validation split "
                             "(beam 4)" if averaged else "measured during training")]
  close = points_needing_seeds(rows)
  if any(row.get(f"{key}_std") for row in aggregate(rows) for key in COMPARED):
    notes.append(f"PPL / BLEU vs base: (tie) when the difference is within {TIE_FACTOR:g}x the "
                 "larger seed spread (std) of the row and base")
  if early_rows:
    notes.append(f"Hollow markers in bleu_vs_params.png: the same points in {early_root} "
                 f"({_fmt(early_rows[0].get('steps'))} steps)")
  if close:
    seeds = ",".join(str(seed) for seed in range(SEEDS_FOR_TIES))
    notes.append(f"A tie with base (perplexity or BLEU) on its first seed or now, on fewer than "
                 f"{SEEDS_FOR_TIES} seeds, to run with more seeds: {', '.join(close)} "
                 f"(`--only={','.join(close)} --seeds={seeds}`)")
  with open(path, "w", encoding="utf-8") as handle:
    handle.write("# Sweep results\n\n" + markdown_table(rows) + "\n\n"
                 + "".join(f"{note}.\n\n" for note in notes) +
                 "![BLEU against parameters](bleu_vs_params.png)\n\n"
                 "![Validation curves](validation_curves.png)\n\n"
                 "![Validation BLEU during training](bleu_curves.png)\n")
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--output", default=None)
  parser.add_argument("--early_root", default=None,
                      help="a shorter sweep of the same points, drawn beside in bleu_vs_params.png")
  args = parser.parse_args()
  try:
    print(write_report(args.root, args.output, args.early_root))
  except FileNotFoundError as error:  # a root without results.jsonl: the user's mistake
    root_found = epath.Path(os.path.join(args.root, sweep.RESULTS)).exists()
    flag = "--early_root" if root_found else "--root"
    parser.exit(2, f"error: {flag}: {error}\n")


if __name__ == "__main__":
  main()
