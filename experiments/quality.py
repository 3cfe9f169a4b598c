"""Translation quality on real data: train, average the last checkpoints, decode the test split.

    python -m experiments.quality --task multi30k [--workdir runs/multi30k] [--skip_training]
    python -m experiments.quality --task tatoeba-zh-en
    python -m experiments.quality --task tatoeba-en-zh

Each phase is a trainer `Job` run by the sweep runner's launchers (`--launcher=local`, or `srun`
inside a SLURM allocation), its output appended to WORKDIR/log.txt (training resumes from the
workdir's checkpoints): train; average the last 5 and the last 10 checkpoints (`--mode=average`,
into WORKDIR/averaged_5 and averaged_10); decode the validation split with beam 4 and alpha 0.6,
1.0 or 1.4 from each average and keep the best of the six (the test split is not looked at to
choose); then `--mode=evaluate` on the test split with those settings on the chosen average and
on the last checkpoint, and greedy on the chosen average (Multi30k: also test_2017_flickr, and
each averaged beam decode scored in the literature's BLEU as well, from the same hypotheses).
Writes `benchmarks/results/quality_TASK.json`, a markdown table on stdout and the learning
curves (losses, and validation BLEU when the config measures it)
`benchmarks/results/quality_TASK.png`.
Extra `--config.KEY=VALUE` flags go to every phase. `--tune_only` probes a recipe: training and
the validation decodes only (test is not read), into `benchmarks/results/tuning/`.

The budget (`--budget_minutes`, 60) counts the training job's wall time
(`transformer.logged_time`: the steps and the periodic validation passes that
draw the learning curve; start-up and compilation left out). When a run takes longer on a slow
day, the same protocol is repeated on the checkpoints saved within the budget (the newest kept
one whose training minutes are within it, and the ones before it; alpha and the number
averaged again chosen on validation): the rows labelled "within N minutes".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any

from experiments import sweep
from launch.job import Job
from transformer import plotting
from transformer.logged_time import cumulative_seconds
from transformer import workdir as workdir_lib

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
# penalty's alpha (beam 4, as in the paper). 1.4: every task chose 1.0 from (0.6, 1.0), with
# outputs still short (Multi30k val: brevity penalty 0.953; 1.4 scored +0.33 there, while 2.0
# lost 4.3 to over-long outputs, 4% of them looping).
AVERAGE_CHOICES = (5, 10)
ALPHA_CHOICES = (0.6, 1.0, 1.4)
BEAM = ["--config.decode.method=beam", "--config.decode.beam_size=4"]
# Multi30k is also scored as the multimodal-MT literature scores it (lowercased, Moses-tokenized).
EXTRA_STYLES = {"multi30k": ["multi30k"]}


def run_phase(job: Job, launcher: sweep.Launcher) -> float:
  """Runs one trainer job through a sweep launcher, its output appended to WORKDIR/log.txt;
  returns its wall seconds."""
  os.makedirs(job.workdir, exist_ok=True)
  log = os.path.join(job.workdir, "log.txt")
  print(f"+ {' '.join(job.flags())}  (progress: tail -f {log})", flush=True)
  start = time.perf_counter()
  code = launcher(job, log)
  if code != 0:
    raise SystemExit(f"error: `{' '.join(job.flags())}` failed with exit code {code}; see {log}")
  return time.perf_counter() - start


def training_minutes(records: list[dict[str, Any]]) -> dict[int, float]:
  """Cumulative training wall time in minutes at each logged step."""
  return {step: seconds / 60 for step, seconds in cumulative_seconds(records).items()}


def training_seconds(records: list[dict[str, Any]]) -> float:
  """Training wall seconds: the logged steps and validation passes (start-up excluded)."""
  return max(cumulative_seconds(records).values())


def plot_learning_curve(records: list[dict[str, Any]], title: str, path: str) -> None:
  """Training and validation loss against training minutes, and beside it the validation BLEU
  measured during training (when the config measures it: `train.bleu_every_steps`)."""
  minutes = training_minutes(records)
  at = lambda step: minutes.get(step, max(minutes.values()))
  train = [(minutes[r["step"]], r["loss"]) for r in records if "loss" in r and r["step"] in minutes]
  evals = [(at(r["step"]), r["eval_loss"]) for r in records if "eval_loss" in r]
  bleus = [(at(r["step"]), r["eval_bleu"]) for r in records if r.get("eval_bleu") is not None]
  plt = plotting.pyplot()
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


def average_last(base: Job, launcher: sweep.Launcher, count: int, until: int = 0) -> str:
  """Averages the last `count` checkpoints (those at or before step `until` when it is > 0)
  into WORKDIR/averaged_COUNT (averaged_COUNT_until_STEP); returns that name."""
  workdir = base.workdir
  run_phase(base.with_flags("--mode=average", f"--config.eval.num_average={count}",
                            f"--config.eval.average_until_step={until}"), launcher)
  name = f"averaged_{count}" + (f"_until_{until}" if until > 0 else "")
  shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  os.replace(os.path.join(workdir, "averaged"), os.path.join(workdir, name))
  return name


def evaluate(base: Job, launcher: sweep.Launcher, directory: str, flags: list[str]
             ) -> dict[str, Any]:
  """`--mode=evaluate` of WORKDIR/DIRECTORY with `flags`; returns the result it wrote."""
  workdir = base.workdir
  run_phase(base.with_flags("--mode=evaluate",
                            f"--checkpoint_dir={os.path.join(workdir, directory)}", *flags),
            launcher)
  result = workdir_lib.newest_evaluation(workdir)
  if os.path.basename(os.path.normpath(result["checkpoint"])) != directory:
    raise SystemExit(f"error: expected an evaluation of {directory}, found {result['checkpoint']}")
  return result


def kept_steps(workdir: str) -> list[int]:
  """The steps of the training checkpoints WORKDIR/checkpoints holds, in order."""
  directory = workdir_lib.checkpoints(workdir)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


def budget_step(records: list[dict[str, Any]], kept: list[int], budget_minutes: float
                ) -> int | None:
  """The newest kept checkpoint saved within `budget_minutes` of training-step time; None when
  the whole run is within the budget or no kept checkpoint is (a checkpoint between two logged
  steps counts the later one's minutes)."""
  minutes = training_minutes(records)
  logged = sorted(minutes)
  if not logged or minutes[logged[-1]] <= budget_minutes:
    return None
  at = lambda step: next((minutes[s] for s in logged if s >= step), minutes[logged[-1]])
  within = [step for step in kept if at(step) <= budget_minutes]
  return max(within) if within else None


def average_choices(kept: int) -> list[int]:
  """The numbers of checkpoints to try averaging: those the run kept (at least one choice)."""
  return [count for count in AVERAGE_CHOICES if count <= kept] or [min(AVERAGE_CHOICES)]


def tune_on_validation(base: Job, launcher: sweep.Launcher, split: str, until: int = 0
                       ) -> list[dict[str, Any]]:
  """Validation BLEU (beam 4) for each number of averaged checkpoints (those at or before step
  `until` when it is > 0) and alpha, best first."""
  grid = []
  kept = [step for step in kept_steps(base.workdir) if until <= 0 or step <= until]
  for count in average_choices(len(kept)):
    directory = average_last(base, launcher, count, until)
    for alpha in ALPHA_CHOICES:
      result = evaluate(base, launcher, directory,
                        [*BEAM, f"--config.decode.alpha={alpha}", f"--config.eval.split={split}"])
      grid.append({"num_average": count, "directory": directory, "alpha": alpha,
                   "val_bleu": result["bleu"], "val_sentences": result["sentences"],
                   "averaged_steps": kept[-count:],
                   "outputs": result["outputs"]})
      print(f"validation: average of {count}{f' until step {until}' if until > 0 else ''}, "
            f"alpha {alpha}: BLEU {result['bleu']:.2f}", flush=True)
  return sorted(grid, key=lambda g: -g["val_bleu"])


def write_probe(task: str, workdir: str, flags: list[str], grids: dict[str, list[dict[str, Any]]],
                timing: dict[str, float], greedy: dict[str, Any], last_step: int) -> None:
  """Writes a `--tune_only` probe's validation results and prints them."""
  directory = os.path.join(RESULTS, "tuning")
  os.makedirs(directory, exist_ok=True)
  name = os.path.basename(os.path.normpath(workdir))
  with open(os.path.join(directory, f"{task}.{name}.json"), "w", encoding="utf-8") as out:
    json.dump({"task": task, "workdir": name, "flags": flags,
               "run": workdir_lib.read_provenance(workdir),
               "validation_grids": grids,
               "validation_greedy": {k: greedy[k] for k in ("bleu", "sentences", "outputs")},
               "seconds": timing, "steps": last_step}, out, indent=2)
  for label, grid in grids.items():
    for row in grid:
      print(f"| {name} | {label} | average {row['num_average']} ({row['averaged_steps'][0]}-"
            f"{row['averaged_steps'][-1]}), alpha {row['alpha']} | {row['val_bleu']:.2f} | "
            f"loops {row['outputs']['loops']:.3f} |")
  print(f"| {name} | whole run | greedy | {greedy['bleu']:.2f} | "
        f"loops {greedy['outputs']['loops']:.3f} |")


def test_decodes(task: str, best: dict[str, Any], prefix: str, baselines: bool
                 ) -> list[tuple[str, str, list[str]]]:
  """(label, checkpoint directory, flags) of the test decodes for the validation's choice
  `best`: beam 4 with its alpha on the test split(s), scored in the task's extra BLEU styles too;
  with `baselines`, also the last checkpoint (beam) and greedy on the chosen average."""
  chosen = [*BEAM, f"--config.decode.alpha={best['alpha']}"]
  first, last = best["averaged_steps"][0], best["averaged_steps"][-1]
  averaged = f"{prefix}average of the last {best['num_average']} ({first}-{last})"
  beam = [*chosen, f"--config.eval.extra_bleu_styles={','.join(EXTRA_STYLES.get(task, []))}"]
  decodes = [(f"{averaged}, beam 4, alpha {best['alpha']}", best["directory"], beam)]
  if baselines:
    decodes += [(f"last, beam 4, alpha {best['alpha']}", "checkpoints", chosen),
                (f"{averaged}, greedy", best["directory"], ["--config.decode.method=greedy"])]
  return decodes + [(f"{averaged}, beam 4, alpha {best['alpha']}", best["directory"],
                     [*beam, f"--config.eval.split={split}"])
                    for split in EXTRA_TEST_SPLITS.get(task, [])]


def decode_test(base: Job, launcher: sweep.Launcher,
                decodes: list[tuple[str, str, list[str]]]) -> list[dict[str, Any]]:
  """Runs the test decodes; one row per decode and extra BLEU style."""
  rows = []
  for label, directory, decode_flags in decodes:
    result = evaluate(base, launcher, directory, decode_flags)
    rows.append({"label": label, **{k: result[k] for k in (
        "bleu", "chrf", "bleu_signature", "step", "split", "sentences", "outputs")}})
    for style, scored in result.get("extra_bleu", {}).items():
      rows.append({**rows[-1], "label": f"{label}, {style} BLEU", **scored})
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", choices=sorted(TASKS), required=True)
  parser.add_argument("--workdir", default="", help="default runs/quality_TASK")
  parser.add_argument("--skip_training", action="store_true", help="evaluate an existing run")
  parser.add_argument("--tune_only", action="store_true",
                      help="a recipe probe: train and decode the validation split only (the "
                           "grid, and greedy on its best average); the test split is not read; "
                           "writes results/tuning/TASK.WORKDIR_NAME.json")
  parser.add_argument("--launcher", default="local", choices=sorted(sweep.LAUNCHERS),
                      help="local: subprocesses; srun: SLURM job steps (inside an allocation)")
  parser.add_argument("--budget_minutes", type=float, default=60.0,
                      help="training minutes (steps and validation passes); a longer run is "
                           "also evaluated on the checkpoints saved within them")
  args, config_flags = parser.parse_known_args()
  unknown = [flag for flag in config_flags if not flag.startswith("--config.")]
  if unknown:
    parser.error(f"unknown argument(s) {' '.join(unknown)} (only --config.KEY=VALUE is passed on)")
  if args.budget_minutes <= 0:
    parser.error(f"--budget_minutes must be positive, got {args.budget_minutes}")
  workdir = args.workdir or os.path.join("runs", f"quality_{args.task}")
  config_file, validation_split = TASKS[args.task]
  base = Job(config_file, workdir).with_flags(*config_flags)
  launcher = sweep.LAUNCHERS[args.launcher]
  timing = {}
  if not args.skip_training:
    # The test split is decoded below, after averaging.
    timing["training"] = run_phase(base.with_flags("--config.train.test_at_end=false"), launcher)
  records = workdir_lib.read_metrics(workdir)
  timing["training (steps and validation passes)"] = training_seconds(records)
  mark = budget_step(records, kept_steps(workdir), args.budget_minutes)
  within = f"within {args.budget_minutes:g} minutes"
  minutes = timing["training (steps and validation passes)"] / 60
  if mark is None and minutes > args.budget_minutes:
    print(f"note: training took {minutes:.1f} minutes and kept no checkpoint from "
          f"{within}: only the whole run is evaluated", flush=True)
  start = time.perf_counter()
  grids = {"whole run": tune_on_validation(base, launcher, validation_split)}
  if mark is not None:
    grids[within] = tune_on_validation(base, launcher, validation_split, until=mark)
  timing["averaging and tuning on validation"] = time.perf_counter() - start
  best = grids["whole run"][0]
  if args.tune_only:
    greedy = evaluate(base, launcher, best["directory"],
                      ["--config.decode.method=greedy", f"--config.eval.split={validation_split}"])
    write_probe(args.task, workdir, config_flags, grids, timing, greedy, records[-1]["step"])
    return
  decodes = test_decodes(args.task, best, "", baselines=True)
  if mark is not None:
    decodes = test_decodes(args.task, grids[within][0], f"{within}: ", baselines=False) + decodes
  start = time.perf_counter()
  rows = decode_test(base, launcher, decodes)
  timing["test evaluation"] = time.perf_counter() - start
  os.makedirs(RESULTS, exist_ok=True)
  plot_learning_curve(records, f"{args.task}: learning curve",
                      os.path.join(RESULTS, f"quality_{args.task}.png"))
  with open(os.path.join(RESULTS, f"quality_{args.task}.json"), "w", encoding="utf-8") as out:
    json.dump({"task": args.task, "config": config_file, "flags": config_flags,
               "run": workdir_lib.read_provenance(workdir),
               "budget_minutes": args.budget_minutes, "budget_step": mark,
               "validation_grids": grids,
               "results": rows, "seconds": timing,
               "validation_curve": [{"step": r["step"], "eval_bleu": r["eval_bleu"]}
                                    for r in records if r.get("eval_bleu") is not None]},
              out, indent=2)
  print(markdown(args.task, rows, timing))


if __name__ == "__main__":
  main()
