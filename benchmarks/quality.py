"""Translation quality on real data: train, average the last checkpoints, decode the test split.

    python benchmarks/quality.py --task multi30k [--workdir runs/multi30k] [--skip_training]
    python benchmarks/quality.py --task tatoeba-zh-en
    python benchmarks/quality.py --task tatoeba-en-zh

Each phase is an ordinary `python -m transformer.main` command (training resumes from the
workdir's checkpoints): train; average the last 5 and the last 10 checkpoints
(`--mode=average`, into WORKDIR/averaged_5 and averaged_10); decode the validation split with
beam 4 and alpha 0.6 or 1.0 from each average and keep the best of the four (the test split is
not looked at to choose); then `--mode=evaluate` on the test split with those settings on the
chosen average and on the last checkpoint, and greedy on the chosen average (Multi30k: also
test_2017_flickr, and each averaged beam decode scored in the literature's BLEU as well, from
the same hypotheses). Writes
`benchmarks/results/quality_TASK.json`, a markdown table on stdout and the learning curves
(losses, and validation BLEU when the config measures it) `benchmarks/results/quality_TASK.png`.
Extra `--config.KEY=VALUE` flags go to every phase. `--tune_only` probes a recipe: training and
the validation decodes only (test is not read), into `benchmarks/results/tuning/`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
# task: (config, validation split)
TASKS = {
    "multi30k": ("experiments/configs/multi30k.py", "val"),
    "tatoeba-zh-en": ("experiments/configs/tatoeba_zh_en.py:zh-en", "validation"),
    "tatoeba-en-zh": ("experiments/configs/tatoeba_zh_en.py:en-zh", "validation"),
}
# Test splits decoded besides the config's own, with the chosen average and alpha.
EXTRA_TEST_SPLITS = {"multi30k": ["test_2017_flickr"]}
# Chosen on the validation split: how many of the last checkpoints to average, and the length
# penalty's alpha (beam 4, as in the paper).
AVERAGE_CHOICES = (5, 10)
ALPHA_CHOICES = (0.6, 1.0)
BEAM = ["--config.decode.method=beam", "--config.decode.beam_size=4"]
# Multi30k is also scored as the multimodal-MT literature scores it (lowercased, Moses-tokenized).
EXTRA_STYLES = {"multi30k": ["multi30k"]}


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


def steps_only_seconds(records: list[dict[str, Any]]) -> float:
  """Training wall seconds of the logged steps (evaluation and start-up excluded)."""
  return 60 * max(training_minutes(records).values())


def newest_evaluation(workdir: str) -> dict[str, Any]:
  """The result `--mode=evaluate` wrote last (`WORKDIR/eval/*.json`)."""
  directory = os.path.join(workdir, "eval")
  paths = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".json")]
  with open(max(paths, key=os.path.getmtime), encoding="utf-8") as handle:
    return json.load(handle)


def plot_learning_curve(records: list[dict[str, Any]], title: str, path: str) -> None:
  """Training and validation loss against training minutes, and beside it the validation BLEU
  measured during training (when the config measures it: `train.bleu_every_steps`)."""
  minutes = training_minutes(records)
  at = lambda step: minutes.get(step, max(minutes.values()))
  train = [(minutes[r["step"]], r["loss"]) for r in records if "loss" in r and r["step"] in minutes]
  evals = [(at(r["step"]), r["eval_loss"]) for r in records if "eval_loss" in r]
  bleus = [(at(r["step"]), r["eval_bleu"]) for r in records if r.get("eval_bleu") is not None]
  figure, axes = plt.subplots(1, 2 if bleus else 1, figsize=(12 if bleus else 7, 4),
                              squeeze=False)
  axis = axes[0][0]
  axis.plot(*zip(*train), label="training loss (label-smoothed)")
  axis.plot(*zip(*evals), "o-", label="validation loss")
  axis.set_ylabel("cross-entropy (nats/token)")
  axis.set_title(title)
  axis.legend()
  if bleus:
    axis = axes[0][1]
    axis.plot(*zip(*bleus), "o-", color="tab:green")
    for x, bleu in bleus[-1:]:
      axis.annotate(f"{bleu:.1f}", (x, bleu), textcoords="offset points", xytext=(-10, 8))
    axis.set_ylabel("validation BLEU (last checkpoint, beam 4)")
    axis.set_title(f"{title}: validation BLEU")
  for axis in axes[0]:
    axis.set_xlabel("training minutes (2 CPU cores)")
    axis.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def markdown(task: str, rows: list[dict[str, Any]], timing: dict[str, float]) -> str:
  """The results table of one task."""
  lines = [f"| {task} | split | checkpoint, decoding | BLEU | chrF | outputs with a loop | "
           "signature |", "|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| | {row['split']} | {row['label']} | {row['bleu']:.2f} | {row['chrf']:.2f} | "
                 f"{100 * row['outputs']['loops']:.1f}% | `{row['bleu_signature']}` |")
  lines.append("")
  lines.append(" · ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items()))
  return "\n".join(lines)


def average_last(common: list[str], workdir: str, count: int) -> str:
  """Averages the last `count` checkpoints into WORKDIR/averaged_COUNT; returns that name."""
  run_phase([*common, "--mode=average", f"--config.eval.num_average={count}"])
  name = f"averaged_{count}"
  shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  os.replace(os.path.join(workdir, "averaged"), os.path.join(workdir, name))
  return name


def evaluate(common: list[str], workdir: str, directory: str, flags: list[str]
             ) -> dict[str, Any]:
  """`--mode=evaluate` of WORKDIR/DIRECTORY with `flags`; returns the result it wrote."""
  run_phase([*common, "--mode=evaluate", f"--checkpoint_dir={os.path.join(workdir, directory)}",
             *flags])
  result = newest_evaluation(workdir)
  if os.path.basename(os.path.normpath(result["checkpoint"])) != directory:
    raise SystemExit(f"error: expected an evaluation of {directory}, found {result['checkpoint']}")
  return result


def kept_checkpoints(workdir: str) -> int:
  """How many training checkpoints WORKDIR/checkpoints holds (step-numbered directories)."""
  directory = os.path.join(workdir, "checkpoints")
  return sum(name.isdigit() for name in os.listdir(directory)) if os.path.isdir(directory) else 0


def average_choices(kept: int) -> list[int]:
  """The numbers of checkpoints to try averaging: those the run kept (at least one choice)."""
  return [count for count in AVERAGE_CHOICES if count <= kept] or [min(AVERAGE_CHOICES)]


def tune_on_validation(common: list[str], workdir: str, split: str) -> list[dict[str, Any]]:
  """Validation BLEU (beam 4) for each number of averaged checkpoints and alpha, best first."""
  grid = []
  for count in average_choices(kept_checkpoints(workdir)):
    directory = average_last(common, workdir, count)
    for alpha in ALPHA_CHOICES:
      result = evaluate(common, workdir, directory,
                        [*BEAM, f"--config.decode.alpha={alpha}", f"--config.eval.split={split}"])
      grid.append({"num_average": count, "directory": directory, "alpha": alpha,
                   "val_bleu": result["bleu"], "val_sentences": result["sentences"],
                   "outputs": result["outputs"]})
      print(f"validation: average of {count}, alpha {alpha}: BLEU {result['bleu']:.2f}",
            flush=True)
  return sorted(grid, key=lambda g: -g["val_bleu"])


def write_probe(task: str, workdir: str, flags: list[str], grid: list[dict[str, Any]],
                timing: dict[str, float], greedy: dict[str, Any]) -> None:
  """Writes a `--tune_only` probe's validation results and prints them."""
  records = read_metrics(workdir)
  timing["training (steps only)"] = steps_only_seconds(records)
  directory = os.path.join(RESULTS, "tuning")
  os.makedirs(directory, exist_ok=True)
  name = os.path.basename(os.path.normpath(workdir))
  with open(os.path.join(directory, f"{task}.{name}.json"), "w", encoding="utf-8") as out:
    json.dump({"task": task, "workdir": name, "flags": flags, "validation_grid": grid,
               "validation_greedy": {k: greedy[k] for k in ("bleu", "sentences", "outputs")},
               "seconds": timing, "steps": records[-1]["step"]}, out, indent=2)
  for row in grid:
    print(f"| {name} | average {row['num_average']}, alpha {row['alpha']} | "
          f"{row['val_bleu']:.2f} | loops {row['outputs']['loops']:.3f} |")
  print(f"| {name} | greedy | {greedy['bleu']:.2f} | loops {greedy['outputs']['loops']:.3f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", choices=sorted(TASKS), required=True)
  parser.add_argument("--workdir", default="", help="default runs/quality_TASK")
  parser.add_argument("--skip_training", action="store_true", help="evaluate an existing run")
  parser.add_argument("--tune_only", action="store_true",
                      help="a recipe probe: train and decode the validation split only (the "
                           "grid, and greedy on its best average); the test split is not read; "
                           "writes results/tuning/TASK.WORKDIR_NAME.json")
  args, config_flags = parser.parse_known_args()
  unknown = [flag for flag in config_flags if not flag.startswith("--config.")]
  if unknown:
    parser.error(f"unknown argument(s) {' '.join(unknown)} (only --config.KEY=VALUE is passed on)")
  workdir = args.workdir or os.path.join("runs", f"quality_{args.task}")
  config_file, validation_split = TASKS[args.task]
  common = [f"--config={config_file}", f"--workdir={workdir}", *config_flags]
  timing = {}
  if not args.skip_training:
    # The test split is decoded below, after averaging.
    timing["training"] = run_phase([*common, "--config.train.test_at_end=false"])
  start = time.perf_counter()
  grid = tune_on_validation(common, workdir, validation_split)
  timing["averaging and tuning on validation"] = time.perf_counter() - start
  best = grid[0]
  if args.tune_only:
    greedy = evaluate(common, workdir, best["directory"],
                      ["--config.decode.method=greedy", f"--config.eval.split={validation_split}"])
    write_probe(args.task, workdir, config_flags, grid, timing, greedy)
    return
  chosen = [*BEAM, f"--config.decode.alpha={best['alpha']}"]
  averaged = f"average of the last {best['num_average']}"
  extra = EXTRA_STYLES.get(args.task, [])
  # The chosen average's test decode is also scored in the task's extra BLEU styles.
  evaluations = [(f"{averaged}, beam 4, alpha {best['alpha']}", best["directory"],
                  [*chosen, f"--config.eval.extra_bleu_styles={','.join(extra)}"]),
                 (f"last, beam 4, alpha {best['alpha']}", "checkpoints", chosen),
                 (f"{averaged}, greedy", best["directory"], ["--config.decode.method=greedy"])]
  evaluations += [(f"{averaged}, beam 4, alpha {best['alpha']}", best["directory"],
                   [*evaluations[0][2], f"--config.eval.split={split}"])
                  for split in EXTRA_TEST_SPLITS.get(args.task, [])]
  start = time.perf_counter()
  rows = []
  for label, directory, decode_flags in evaluations:
    result = evaluate(common, workdir, directory, decode_flags)
    rows.append({"label": label, **{k: result[k] for k in (
        "bleu", "chrf", "bleu_signature", "step", "split", "sentences", "outputs")}})
    for style, scored in result.get("extra_bleu", {}).items():
      rows.append({**rows[-1], "label": f"{label}, {style} BLEU", **scored})
  timing["test evaluation"] = time.perf_counter() - start
  records = read_metrics(workdir)
  timing["training (steps only)"] = steps_only_seconds(records)
  os.makedirs(RESULTS, exist_ok=True)
  plot_learning_curve(records, f"{args.task}: learning curve",
                      os.path.join(RESULTS, f"quality_{args.task}.png"))
  with open(os.path.join(RESULTS, f"quality_{args.task}.json"), "w", encoding="utf-8") as out:
    json.dump({"task": args.task, "config": config_file, "flags": config_flags,
               "validation_grid": grid, "results": rows, "seconds": timing,
               "validation_curve": [{"step": r["step"], "eval_bleu": r["eval_bleu"]}
                                    for r in records if r.get("eval_bleu") is not None]},
              out, indent=2)
  print(markdown(args.task, rows, timing))


if __name__ == "__main__":
  main()
