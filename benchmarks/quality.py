"""Translation quality on real data: train, average the last checkpoints, decode the test split.

    python benchmarks/quality.py --task multi30k [--workdir runs/multi30k] [--skip_training]
    python benchmarks/quality.py --task tatoeba-zh-en
    python benchmarks/quality.py --task tatoeba-en-zh

Each phase is an ordinary `python -m transformer.main` command (training resumes from the
workdir's checkpoints): train, `--mode=average`, then `--mode=evaluate` on the test split with
beam 4 (alpha 0.6) on the averaged and on the last checkpoint, and greedy on the averaged one.
Writes `benchmarks/results/quality_TASK.json`, a markdown table on stdout and the learning curve
`benchmarks/results/quality_TASK.png`. Extra `--config.KEY=VALUE` flags go to every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
TASKS = {
    "multi30k": "experiments/configs/multi30k.py",
    "tatoeba-zh-en": "experiments/configs/tatoeba_zh_en.py:zh-en",
    "tatoeba-en-zh": "experiments/configs/tatoeba_zh_en.py:en-zh",
}
# (label, checkpoint directory under the workdir, decoding flags)
EVALUATIONS = [
    ("averaged, beam 4", "averaged", ["--config.decode.method=beam",
                                      "--config.decode.beam_size=4"]),
    ("last, beam 4", "checkpoints", ["--config.decode.method=beam",
                                     "--config.decode.beam_size=4"]),
    ("averaged, greedy", "averaged", ["--config.decode.method=greedy"]),
]
# Multi30k is also scored as the multimodal-MT literature scores it (lowercased, Moses-tokenized).
LITERATURE_STYLE = {"multi30k": ("averaged, beam 4, multi30k BLEU", "averaged",
                                 ["--config.decode.method=beam", "--config.decode.beam_size=4",
                                  "--config.eval.bleu_style=multi30k"])}


def run_phase(argv: list[str]) -> float:
  """Runs one `transformer.main` command (output streamed); returns its wall seconds."""
  start = time.perf_counter()
  print("+ " + " ".join(argv), flush=True)
  code = subprocess.run([sys.executable, "-m", "transformer.main", *argv], cwd=REPO).returncode
  if code != 0:
    raise SystemExit(f"error: `{' '.join(argv)}` failed with exit code {code}")
  return time.perf_counter() - start


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `WORKDIR/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as handle:
    return [json.loads(line) for line in handle if line.strip()]


def training_minutes(records: list[dict[str, Any]]) -> dict[int, float]:
  """Cumulative training time (minutes, evaluation excluded) at each logged step."""
  minutes, total, previous = {}, 0.0, 0
  for record in records:
    if "steps_per_sec" in record:
      total += (record["step"] - previous) / record["steps_per_sec"] / 60
      previous = record["step"]
      minutes[record["step"]] = total
  return minutes


def newest_evaluation(workdir: str) -> dict[str, Any]:
  """The result `--mode=evaluate` wrote last (`WORKDIR/eval/*.json`)."""
  directory = os.path.join(workdir, "eval")
  paths = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".json")]
  with open(max(paths, key=os.path.getmtime), encoding="utf-8") as handle:
    return json.load(handle)


def plot_learning_curve(records: list[dict[str, Any]], title: str, path: str) -> None:
  """Training and validation loss against training minutes (top axis: steps)."""
  minutes = training_minutes(records)
  train = [(minutes[r["step"]], r["loss"]) for r in records if "loss" in r and r["step"] in minutes]
  evals = [(minutes.get(r["step"], max(minutes.values())), r["eval_loss"], r.get("eval_bleu"))
           for r in records if "eval_loss" in r]
  figure, axis = plt.subplots(figsize=(7, 4))
  axis.plot(*zip(*train), label="training loss (label-smoothed)")
  axis.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="validation loss")
  for x, loss, bleu in evals:
    if bleu is not None:
      axis.annotate(f"val BLEU {bleu:.1f}", (x, loss), textcoords="offset points",
                    xytext=(-60, 12))
  axis.set_xlabel("training minutes (2 CPU cores)")
  axis.set_ylabel("cross-entropy (nats/token)")
  axis.set_title(title)
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def markdown(task: str, rows: list[dict[str, Any]], timing: dict[str, float]) -> str:
  """The results table of one task."""
  lines = [f"| {task} | checkpoint, decoding | BLEU | chrF | signature |",
           "|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| | {row['label']} | {row['bleu']:.2f} | {row['chrf']:.2f} | "
                 f"`{row['bleu_signature']}` |")
  lines.append("")
  lines.append(" · ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items()))
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", choices=sorted(TASKS), required=True)
  parser.add_argument("--workdir", default="", help="default runs/quality_TASK")
  parser.add_argument("--skip_training", action="store_true", help="evaluate an existing run")
  args, config_flags = parser.parse_known_args()
  unknown = [flag for flag in config_flags if not flag.startswith("--config.")]
  if unknown:
    parser.error(f"unknown argument(s) {' '.join(unknown)} (only --config.KEY=VALUE is passed on)")
  workdir = args.workdir or os.path.join("runs", f"quality_{args.task}")
  common = [f"--config={TASKS[args.task]}", f"--workdir={workdir}", *config_flags]
  timing = {}
  if not args.skip_training:
    # The test split is decoded below, after averaging.
    timing["training"] = run_phase([*common, "--config.train.test_at_end=false"])
  timing["averaging"] = run_phase([*common, "--mode=average"])
  rows = []
  evaluation_seconds = 0.0
  extra = [LITERATURE_STYLE[args.task]] if args.task in LITERATURE_STYLE else []
  for label, directory, decode_flags in EVALUATIONS + extra:
    evaluation_seconds += run_phase([*common, "--mode=evaluate",
                                     f"--checkpoint_dir={os.path.join(workdir, directory)}",
                                     *decode_flags])
    result = newest_evaluation(workdir)
    if os.path.basename(os.path.normpath(result["checkpoint"])) != directory:
      raise SystemExit(f"error: expected an evaluation of {directory}, found "
                       f"{result['checkpoint']}")
    rows.append({"label": label, **{k: result[k] for k in (
        "bleu", "chrf", "bleu_signature", "step", "split", "sentences")}})
  timing["evaluation"] = evaluation_seconds
  records = read_metrics(workdir)
  timing["training (steps only)"] = 60 * max(training_minutes(records).values())
  os.makedirs(RESULTS, exist_ok=True)
  plot_learning_curve(records, f"{args.task}: learning curve",
                      os.path.join(RESULTS, f"quality_{args.task}.png"))
  with open(os.path.join(RESULTS, f"quality_{args.task}.json"), "w", encoding="utf-8") as out:
    json.dump({"task": args.task, "config": TASKS[args.task], "flags": config_flags,
               "results": rows, "seconds": timing}, out, indent=2)
  print(markdown(args.task, rows, timing))


if __name__ == "__main__":
  main()
