"""Runs a sweep: every point is a normal training run; finished points are skipped.

    python -m experiments.sweep --sweep=experiments/sweeps/table3.py[:SCALE] --root=DIR \
        [--only=base,A_h1] [--parallel=1] [--seeds=0,1,2] [--retries=2]

A sweep file defines `get_sweep(arg)` returning `{"name", "config", "points": [{"name",
"overrides"}]}` and optionally `"reference": {point: {"perplexity", "bleu"}}` (published numbers,
shown beside ours in the report) and `"finish": [[FLAG, ...], ...]`: commands run after a point's
training with the point's own flags plus these (`{workdir}` is filled in), e.g. `--mode=average`
then `--mode=evaluate` of the averaged checkpoint on the whole validation split; the row then
carries that evaluation as `final_eval`. Each point trains in `ROOT/NAME` with
`python -m transformer.main` (a `launch.job.Job` handed to the launcher); its summary (config,
parameter count, steps, wall time, final validation perplexity and BLEU) is appended to
`ROOT/results.jsonl` with the full resolved config, the git commit, library versions, devices,
seed and wall time. A point is done only when its trainer exited 0 and its workdir holds the
final step's checkpoint; a failed point is run again up to `--retries` times (it resumes from its
checkpoints). `--seeds=0,1,2` repeats every point with each seed (`NAME@seedS`; the config's own
seed keeps the plain name). A sweep stopped and started again picks up where it stopped.
`python -m experiments.report --root=DIR` writes the comparison.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import subprocess
import threading
import time
from typing import Any, Callable, Iterator

import ml_collections
from etils import epath

from experiments import sweep_arguments
from launch.job import Job
from transformer import config as model_config
from transformer import config_files
from transformer import logged_time
from transformer import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = "results.jsonl"

Launcher = Callable[[Job, str], int]


class SweepError(ValueError):
  """A sweep file that cannot run: names the point and the key."""


class PointFailed(RuntimeError):
  """A point that failed every attempt."""


def load_sweep(spec: str) -> dict[str, Any]:
  """`path/to/sweep.py[:arg]` -> the sweep dict from its `get_sweep(arg)`."""
  path, _, arg = spec.partition(":")
  try:
    return config_files.call(path, "get_sweep", arg, "sweep")
  except config_files.ConfigFileError as error:
    raise SweepError(str(error)) from None


def load_config(path: str) -> ml_collections.ConfigDict:
  """The base experiment config of a sweep (its `get_config()`)."""
  try:
    return config_files.load_config(path)
  except config_files.ConfigFileError as error:
    raise SweepError(str(error)) from None


def point_config(base: ml_collections.ConfigDict, point: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """The base config with the point's overrides applied, as `--config.KEY=VALUE` would."""
  config = base.copy_and_resolve_references()
  config.lock()
  for key, value in point["overrides"].items():
    *parents, leaf = key.split(".")
    node = config
    try:
      for parent in parents:
        node = node[parent]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError, TypeError) as error:
      raise SweepError(f"point '{point['name']}': unknown or invalid override key '{key}' "
                       f"({error})") from None
  return config


def validate(sweep: dict[str, Any]) -> list[ml_collections.ConfigDict]:
  """Checks every point before anything runs; returns their configs."""
  names = [point["name"] for point in sweep["points"]]
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise SweepError(f"sweep '{sweep['name']}': duplicate point name(s) {', '.join(duplicates)}")
  base = load_config(os.path.join(REPO, sweep["config"]))
  configs = []
  for point in sweep["points"]:
    config = point_config(base, point)
    try:
      model_config.from_dict(config.model.to_dict())
    except ValueError as error:
      raise SweepError(f"point '{point['name']}': {error}") from None
    configs.append(config)
  return configs


def with_seeds(sweep: dict[str, Any], seeds: list[int] | None) -> dict[str, Any]:
  """The sweep with every point repeated per seed; the config's own seed keeps the point's name."""
  if not seeds:
    return sweep
  default_seed = load_config(os.path.join(REPO, sweep["config"])).seed
  points, reference = [], {}
  for point in sweep["points"]:
    for seed in seeds:
      name = point["name"] if seed == default_seed else f"{point['name']}@seed{seed}"
      overrides = point["overrides"] if seed == default_seed else {**point["overrides"],
                                                                   "seed": seed}
      points.append({"name": name, "overrides": overrides})
      if point["name"] in sweep.get("reference", {}):
        reference[name] = sweep["reference"][point["name"]]
  return {**sweep, "points": points, "reference": reference}


def selected(sweep: dict[str, Any], only: set[str] | None) -> set[str] | None:
  """The points `--only` names; a name also selects its seed repeats (`base` -> `base@seed1`)."""
  if not only:
    return None
  names = {p["name"] for p in sweep["points"]}
  unknown = sorted(name for name in only
                   if name not in names and not any(n.split("@seed")[0] == name for n in names))
  if unknown:
    raise SweepError(f"--only: no point(s) {', '.join(unknown)} in sweep '{sweep['name']}'")
  return {name for name in names if name in only or name.split("@seed")[0] in only}


def completed(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether a point's workdir holds the checkpoint of its final step."""
  return workdir_lib.has_checkpoint(workdir, config.train.num_steps)


def training_job(sweep: dict[str, Any], point: dict[str, Any], workdir: str) -> Job:
  """The training job of one point."""
  overrides = tuple(f"{key}={_flag_value(value)}" for key, value in point["overrides"].items())
  return Job(sweep["config"], workdir, overrides)


def finish_jobs(sweep: dict[str, Any], point: dict[str, Any], workdir: str) -> list[Job]:
  """The jobs run after a point's training: its training job plus each `finish` entry's flags."""
  training = training_job(sweep, point, workdir)
  return [training.with_flags(*(flag.format(workdir=workdir) for flag in flags))
          for flags in sweep.get("finish", [])]


def train_and_finish(sweep: dict[str, Any], point: dict[str, Any], workdir: str,
                     config: ml_collections.ConfigDict, launcher: Launcher) -> str:
  """One attempt at a point: '' when done, else why it is not."""
  log = os.path.join(workdir, "log.txt")
  code = launcher(training_job(sweep, point, workdir), log)
  if code != 0:
    return f"exit {code}"
  if not completed(workdir, config):
    return f"no checkpoint of step {config.train.num_steps}"
  for job in finish_jobs(sweep, point, workdir):
    code = launcher(job, log)
    if code != 0:
      return f"exit {code} of `{' '.join(job.flags())}`"
  return ""


def final_evaluation(workdir: str) -> dict[str, Any] | None:
  """The evaluation a point's `finish` commands wrote last (`WORKDIR/eval/*.json`), if any."""
  result = workdir_lib.newest_evaluation(workdir)
  if result is None:
    return None
  return {key: result.get(key) for key in ("bleu", "chrf", "bleu_signature", "split", "sentences",
                                           "step", "checkpoint")}


def _flag_value(value: Any) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def subprocess_launcher(job: Job, log_path: str) -> int:
  """Runs one job locally, its output in `log_path`."""
  return run_logged(job.argv(), log_path)


def run_logged(argv: list[str], log_path: str) -> int:
  """Runs a command from the repository root, its output appended to `log_path` (local)."""
  with open(log_path, "a", encoding="utf-8") as log:
    return subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def srun_launcher(job: Job, log_path: str) -> int:
  """Runs one job as a SLURM job step inside an allocation (`launch/slurm.py`'s arrays):
  training on every task with `--multihost`, a finish job (`--mode=...`) on one task."""
  if job.mode != "train":
    return run_logged(["srun", "--kill-on-bad-exit=1", "--nodes=1", "--ntasks=1", *job.argv()],
                      log_path)
  return run_logged(["srun", "--kill-on-bad-exit=1", *job.argv(), "--multihost"], log_path)


LAUNCHERS: dict[str, Launcher] = {"local": subprocess_launcher, "srun": srun_launcher}


def recorded_rows(root: str) -> dict[str, dict[str, Any]]:
  """Point name -> its last results row."""
  path = os.path.join(root, RESULTS)
  if not epath.Path(path).exists():
    return {}
  lines = epath.Path(path).read_text().splitlines()
  return {row["point"]: row for row in map(json.loads, filter(str.strip, lines))}


def recorded_budgets(rows: dict[str, dict[str, Any]]) -> dict[str, int]:
  """Point name -> the training steps (`train.num_steps`) of its results row."""
  return {name: row["config"]["train"]["num_steps"] if "config" in row else row["steps"]
          for name, row in rows.items()}


def finished(root: str) -> set[str]:
  """Names of the points that have a result (at whatever budget)."""
  return set(recorded_rows(root))


def append_result(root: str, row: dict[str, Any]) -> None:
  """Adds a row to results.jsonl. A local root is locked while it is written: the tasks of a
  SLURM array finish points in separate processes."""
  path = os.path.join(root, RESULTS)
  with _exclusive(path):
    workdir_lib.append_line(path, json.dumps(row))


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
  """An exclusive lock on `path`'s sidecar `.lock` file (local paths; gs:// is not locked)."""
  if "://" in path:
    yield
    return
  with open(f"{path}.lock", "a", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _provenance(workdir: str) -> dict[str, Any]:
  """What the trainer recorded about its code and machine (WORKDIR/provenance.json)."""
  recorded = workdir_lib.read_provenance(workdir) or {}
  return {key: recorded.get(key) for key in ("commit", "dirty", "versions", "device_kind",
                                             "device_count", "process_count")}


def logged_seconds(records: list[dict[str, Any]]) -> float | None:
  """The trainer's own account of its wall time over every session of a workdir (the steps'
  intervals and the validation passes, start-up excluded), or None where a training record
  predates `interval_seconds` and the sum would leave time out."""
  if not logged_time.has_interval_times(records):
    return None
  return max(logged_time.cumulative_seconds(records).values())


def validation_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The validation records of a metrics.jsonl (step and eval_* values), in step order; a step
  logged twice (a run resumed from a checkpoint before it) keeps its later record."""
  by_step = {record["step"]: {k: v for k, v in record.items() if k.startswith("eval_")}
             for record in records if any(k.startswith("eval_") for k in record)}
  return [{"step": step, **values} for step, values in sorted(by_step.items())]


def summarize(point: dict[str, Any], config: ml_collections.ConfigDict, workdir: str,
              seconds: float) -> dict[str, Any]:
  """The results row of a finished point: metrics.jsonl, config and provenance. The wall time
  is the trainer's logged one where it has it (it spans sessions a stopped point resumed
  over), else `seconds`, this invocation's. `validation` keeps every validation record, so the
  report can draw the curves from the committed rows once the run directory is gone."""
  last: dict[str, Any] = {}
  records = workdir_lib.read_metrics(workdir)
  for record in records:
    last.update({k: v for k, v in record.items() if k.startswith("eval_") or k == "step"})
  logged = logged_seconds(records)
  model = model_config.from_dict(config.model.to_dict())
  return {"point": point["name"], "overrides": point["overrides"], "params": model.num_params(),
          "steps": last.get("step"), "wall_seconds": seconds if logged is None else logged,
          "wall_source": "invocation" if logged is None else "trainer log",
          "eval_perplexity": last.get("eval_perplexity"), "eval_bleu": last.get("eval_bleu"),
          "eval_loss": last.get("eval_loss"), "seed": config.seed,
          "validation": validation_history(records),
          "config": json.loads(config.to_json_best_effort()), **_provenance(workdir)}


def done_line(row: dict[str, Any]) -> str:
  """The console line of a finished point: the BLEU its report will use (the finish commands'
  evaluation where there is one) named as such, beside the last one measured in training."""
  def number(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
  line = (f"done {row['point']}: dev perplexity {number(row.get('eval_perplexity'), 3)}, "
          f"BLEU in training {number(row.get('eval_bleu'), 2)}")
  final = row.get("final_eval")
  if final:
    line += (f", final BLEU {number(final.get('bleu'), 2)} ({final.get('split')}, "
             f"{final.get('sentences')} sentences, {final.get('checkpoint')})")
  return line


def run_sweep(sweep: dict[str, Any], root: str, only: set[str] | None = None,
              parallel: int = 1, launcher: Launcher = subprocess_launcher, retries: int = 0,
              seeds: list[int] | None = None) -> list[str]:
  """Runs the unfinished points (of `only`, if given); returns the names that ran."""
  sweep = with_seeds(sweep, seeds)
  configs = dict(zip((p["name"] for p in sweep["points"]), validate(sweep)))
  only = selected(sweep, only)
  epath.Path(root).mkdir(parents=True, exist_ok=True)
  budgets = {name: config.train.num_steps for name, config in configs.items()}
  earlier = recorded_rows(root)  # results.jsonl, read once
  recorded = recorded_budgets(earlier)
  shrunk = sorted(name for name, steps in recorded.items() if steps > budgets.get(name, steps))
  if shrunk:
    raise SweepError(f"point(s) {', '.join(shrunk)} in {root} were trained for more steps than "
                     f"the sweep's train.num_steps; use another --root")
  # A point trained for fewer steps than its budget now resumes from its last checkpoint; its
  # new row follows the old one in results.jsonl.
  done = {name for name, steps in recorded.items() if budgets.get(name, steps) == steps}
  cooled = sorted(name for name in set(recorded) - done
                  if earlier[name].get("config", {}).get("train", {}).get("cooldown_steps"))
  if cooled:
    raise SweepError(f"point(s) {', '.join(cooled)} in {root} finished a learning-rate cooldown "
                     "(train.cooldown_steps); a larger budget needs another --root")
  todo = [p for p in sweep["points"]
          if p["name"] not in done and (not only or p["name"] in only)]
  for point in sweep["points"]:
    if point["name"] in done:
      print(f"skip {point['name']}: finished", flush=True)
    elif point["name"] in recorded and (not only or point["name"] in only):
      print(f"extend {point['name']}: finished at {recorded[point['name']]} steps, budget now "
            f"{budgets[point['name']]}", flush=True)

  def run_point(point: dict[str, Any]) -> str:
    workdir = os.path.join(root, point["name"])
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    start = time.time()
    print(f"run {point['name']} -> {workdir}", flush=True)
    config = configs[point["name"]]
    for attempt in range(1, retries + 2):
      why = train_and_finish(sweep, point, workdir, config, launcher)
      if not why:
        break
      print(f"point {point['name']}: attempt {attempt} failed ({why})", flush=True)
    else:
      raise PointFailed(f"point '{point['name']}' failed {retries + 1} time(s) (last: {why}); "
                         f"see {os.path.join(workdir, 'log.txt')}")
    row = summarize(point, config, workdir, time.time() - start)
    row["attempts"] = attempt
    if point["name"] in earlier:  # an extended point: its wall time includes the shorter run's
      if row["wall_source"] == "invocation":  # (the trainer's log already holds it)
        row["wall_seconds"] += earlier[point["name"]].get("wall_seconds", 0.0)
      row["extended_from_steps"] = earlier[point["name"]]["steps"]
    if sweep.get("finish"):
      row["final_eval"] = final_evaluation(workdir)
    if point["name"] in sweep.get("reference", {}):
      row["reference"] = sweep["reference"][point["name"]]
    with lock:  # points finish concurrently with --parallel
      append_result(root, row)
    print(done_line(row), flush=True)
    return point["name"]

  lock = threading.Lock()
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
    return list(pool.map(run_point, todo))


def parse_seeds(text: str) -> list[int] | None:
  """`0,1,2` -> [0, 1, 2]; '' -> None."""
  try:
    return [int(seed) for seed in text.split(",") if seed.strip()] or None
  except ValueError:
    raise SweepError(f"--seeds: expected comma-separated integers, got '{text}'") from None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sweep_arguments.add(parser, root=True, retries=True)
  parser.add_argument("--parallel", type=int, default=1, help="points trained at once")
  parser.add_argument("--launcher", default="local", choices=sorted(LAUNCHERS),
                      help="local: subprocesses; srun: SLURM job steps (inside an allocation)")
  args = parser.parse_args()
  try:
    sweep = load_sweep(args.sweep)
    only = {name for name in args.only.split(",") if name} or None
    run_sweep(sweep, args.root, only, args.parallel, LAUNCHERS[args.launcher],
              retries=args.retries, seeds=parse_seeds(args.seeds))
  except (SweepError, PointFailed) as error:
    raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
  main()
