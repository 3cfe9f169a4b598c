"""The quality experiment (`experiments/quality.py`): its time and budget arithmetic, its probe
record, and the trainer jobs it hands the sweep's launcher to tune on validation."""

import json
import os

import numpy as np

from experiments import quality
from launch.job import Job


def test_quality_training_minutes_and_average_choices():
  records = [{"step": 100, "steps_per_sec": 2.0}, {"step": 100, "eval_loss": 3.0},
             {"step": 300, "steps_per_sec": 4.0}]
  # 100 steps at 2/s (50 s), then 200 at 4/s (50 s); evaluation records add no time.
  assert quality.training_minutes(records) == {100: 50 / 60, 300: 100 / 60}
  assert quality.average_choices(10) == [5, 10]
  assert quality.average_choices(7) == [5]
  assert quality.average_choices(3) == [5]  # always at least one choice
  # Budget 1.0 min: step 100 (0.83 min) is within, step 300 (1.67) is not; a checkpoint at 200
  # counts the next logged step's minutes (300), so it is not within either.
  assert quality.budget_step(records, [100, 200, 300], 1.0) == 100
  assert quality.budget_step(records, [200, 300], 1.0) is None  # no kept checkpoint within
  assert quality.budget_step(records, [100, 200, 300], 100 / 60) is None  # whole run within
  assert quality.budget_step(records, [100, 200, 300], 1.6) == 100
  # Newer records carry their interval's seconds and each validation pass its own; a run
  # resumed from step 100 logs step 200 twice, and both intervals were spent.
  timed = [{"step": 100, "steps_per_sec": 2.0, "interval_seconds": 50.0},
           {"step": 100, "eval_loss": 3.0, "validation_seconds": 10.0},
           {"step": 200, "steps_per_sec": 2.0, "interval_seconds": 50.0},
           {"step": 200, "steps_per_sec": 2.0, "interval_seconds": 50.0}]
  minutes = quality.training_minutes(timed)
  assert sorted(minutes) == [100, 200]
  np.testing.assert_allclose([minutes[100], minutes[200]], [60 / 60, 160 / 60], rtol=1e-12)
  np.testing.assert_allclose(quality.training_seconds(timed), 160.0, rtol=1e-12)
  row = {"split": "val", "label": "last", "bleu": 30.0, "chrf": 50.0, "bleu_signature": "sig",
         "outputs": {"loops": 0.125}}
  assert "| | val | last | 30.00 | 50.00 | 12.5% | `sig` |" in quality.markdown("t", [row], {})


def test_quality_probe_record_names_the_run_that_produced_it(tmp_path, monkeypatch):
  workdir = tmp_path / "probe_tiny"
  workdir.mkdir()
  provenance = {"commit": "abc123", "dirty": True, "seed": 0,
                "config": {"model": {"d_model": 128, "encoder_layers": 4}}}
  (workdir / "provenance.json").write_text(json.dumps(provenance))
  monkeypatch.setattr(quality, "RESULTS", str(tmp_path / "results"))
  row = {"num_average": 5, "averaged_steps": [100, 200], "alpha": 1.0, "val_bleu": 30.0,
         "outputs": {"loops": 0.0}}
  greedy = {"bleu": 29.0, "sentences": 10, "outputs": {"loops": 0.0}}
  quality.write_probe("multi30k", str(workdir), [], {"whole run": [row]}, {}, greedy, 200)
  record = json.loads((tmp_path / "results" / "tuning" / "multi30k.probe_tiny.json").read_text())
  assert record["run"] == provenance  # the model shape is in the record, not only in flags
  assert record["steps"] == 200 and record["validation_greedy"]["bleu"] == 29.0


def test_tuning_runs_average_and_evaluate_jobs_and_picks_the_best(tmp_path):
  """A scripted launcher plays the trainer: `--mode=average` leaves WORKDIR/averaged, and
  `--mode=evaluate` writes an evaluation whose BLEU depends on the alpha and the average."""
  workdir = tmp_path / "run"
  for step in range(100, 1100, 100):
    (workdir / "checkpoints" / str(step)).mkdir(parents=True)
  jobs = []

  def launcher(job, log):
    jobs.append(job)
    flags = dict(flag.split("=", 1) for flag in job.flags())
    if job.mode == "average":
      (workdir / "averaged").mkdir()
    else:
      count = int(os.path.basename(flags["--checkpoint_dir"]).split("_")[1])
      alpha = float(flags["--config.decode.alpha"])
      (workdir / "eval").mkdir(exist_ok=True)
      (workdir / "eval" / f"{len(jobs)}.json").write_text(json.dumps({
          "bleu": 30 + count - abs(alpha - 1.0), "sentences": 9, "outputs": {"loops": 0.0},
          "checkpoint": flags["--checkpoint_dir"]}))
      os.utime(workdir / "eval" / f"{len(jobs)}.json", (len(jobs), len(jobs)))
    return 0

  grid = quality.tune_on_validation(Job("c.py", str(workdir), ("seed=1",)), launcher, "val")
  assert [job.mode for job in jobs] == ["average", "evaluate", "evaluate", "evaluate"] * 2
  assert all(job.config == "c.py" and "seed=1" in job.overrides for job in jobs)
  assert "--config.eval.num_average=10" in jobs[4].flags()
  best = grid[0]
  assert (best["num_average"], best["alpha"], best["directory"]) == (10, 1.0, "averaged_10")
  assert best["averaged_steps"] == list(range(100, 1100, 100))
