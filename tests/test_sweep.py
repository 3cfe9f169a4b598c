"""Sweeps as data: expansion, validation, skip-finished, report."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from experiments import report, sweep
from experiments.sweeps import depth_diagnostic, table3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_table3_expands_to_the_paper_rows():
  for scale in ("cpu", "cpu_converged", "tpu"):
    definition = table3.get_sweep(scale)
    names = [p["name"] for p in definition["points"]]
    assert names[0] == "base" and len(names) == len(set(names)) == 19
    configs = dict(zip(names, sweep.validate(definition)))
    base = configs["base"].model
    for h in (1, 4, 16, 32):  # (A): d_k = d_v = d_model / h keeps computation constant
      model = configs[f"A_h{h}"].model
      assert model.num_heads == h and model.d_k == model.d_v == base.d_model // h
    if scale.startswith("cpu"):  # the CPU scales' batch stays 4 x 256 whatever multi30k.py packs
      data = configs["base"].data
      assert (data.batch_size, data.packed_length, data.packed_inputs_length) == (4, 256, 248)
  tpu = dict(zip([p["name"] for p in table3.get_sweep("tpu")["points"]],
                 sweep.validate(table3.get_sweep("tpu"))))
  assert tpu["base"].model.d_model == 512 and tpu["B_dk16"].model.d_k == 16
  assert tpu["C_N8"].model.encoder_layers == 8 and tpu["C_d1024"].model.d_model == 1024
  assert tpu["C_ff4096"].model.d_ff == 4096 and tpu["D_ls0.2"].train.label_smoothing == 0.2
  assert tpu["E_learned"].model.positional_encoding == "learned"


def test_depth_diagnostic_changes_only_normalization_or_learning_rate_of_table3_points():
  # the halved rates the README names; each is half of what the scale's base config resolves to
  for scale, half_rate in (("cpu_converged", 0.25), ("tpu", 0.5)):
    table = {p["name"]: p["overrides"] for p in table3.get_sweep(scale)["points"]}
    definition = depth_diagnostic.get_sweep(scale)
    points = {p["name"]: p["overrides"] for p in definition["points"]}
    lower = f"C_N8_lr{half_rate:g}"
    assert list(points) == ["base", "C_N8", "base_pre", "C_N8_pre", lower]
    # the Table 3 root's finished base and C_N8 are these very points
    assert points["base"] == table["base"] and points["C_N8"] == table["C_N8"]
    changed = lambda name, of: {k: v for k, v in points[name].items() if table[of].get(k) != v}
    assert changed("base_pre", "base") == changed("C_N8_pre", "C_N8") == {
        "model.normalization": "pre"}
    assert changed(lower, "C_N8") == {"train.learning_rate_factor": half_rate}
    configs = dict(zip(points, sweep.validate(definition)))
    assert configs["C_N8_pre"].model.normalization == "pre"
    assert configs[lower].train.learning_rate_factor == half_rate
    assert configs["C_N8"].train.learning_rate_factor == 2 * half_rate
    assert configs["base"].model.normalization == "post"  # the paper's and Table 3's
  assert definition["finish"] == table3.get_sweep("tpu")["finish"]


def test_report_shows_normalization_and_learning_rate_only_where_a_row_changes_them():
  row = {"params": 1e6, "eval_perplexity": 5.0, "eval_bleu": 30.0, "wall_seconds": 60.0}
  post = {"model": {"normalization": "post"}, "train": {"learning_rate_factor": 0.5}}
  base = {**row, "point": "base", "overrides": {"train.learning_rate_factor": 0.5}}
  rows = [base, {**row, "point": "pre", "overrides": {"train.learning_rate_factor": 0.5,
                                                       "model.normalization": "pre"}},
          {**row, "point": "slow", "overrides": {"train.learning_rate_factor": 0.25}}]
  lines = report.markdown_table(rows).splitlines()
  assert lines[0].startswith("|  | LN | lr factor | seeds |")
  assert lines[2].startswith("| base |  | 0.50 | 1 |")  # recorded without its config
  assert lines[3].startswith("| pre | pre |  | 1 |")
  assert lines[4].startswith("| slow |  | 0.25 | 1 |")
  assert report.markdown_table([base]).splitlines()[0].startswith("|  | lr factor | seeds |")
  # With their full configs: base shows the config's own LN, and a row that sets base's value
  # explicitly shows nothing.
  same = {**row, "point": "same", "overrides": {"model.normalization": "post"}, "config": post}
  lines = report.markdown_table([{**base, "config": post}, rows[1], same]).splitlines()
  assert lines[2].startswith("| base | post | 0.50 | 1 |")
  assert lines[3].startswith("| pre | pre |  | 1 |")
  assert lines[4].startswith("| same |  |  | 1 |")


def small_sweep(points):
  return {"name": "test", "config": "tests/tiny_config.py", "points": points}


def test_bad_sweeps_fail_before_anything_runs(tmp_path):
  ran = []
  launcher = lambda job, log: ran.append(job.argv()) or 0
  with pytest.raises(sweep.SweepError, match=r"point 'typo': unknown or invalid override key "
                                             r"'model.d_modle'"):
    sweep.run_sweep(small_sweep([{"name": "ok", "overrides": {}},
                                 {"name": "typo", "overrides": {"model.d_modle": 8}}]),
                    str(tmp_path), launcher=launcher)
  with pytest.raises(sweep.SweepError, match=r"duplicate point name\(s\) a"):
    sweep.run_sweep(small_sweep([{"name": "a", "overrides": {}}, {"name": "a", "overrides": {}}]),
                    str(tmp_path), launcher=launcher)
  with pytest.raises(sweep.SweepError, match=r"point 'odd': ModelConfig.d_model \(30\)"):
    sweep.run_sweep(small_sweep([{"name": "odd", "overrides": {"model.d_model": 30}}]),
                    str(tmp_path), launcher=launcher)
  assert ran == []


def fake_training(job, log_path):
  """Stands in for `transformer.main`: writes the metrics a run would."""
  workdir = job.workdir
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as handle:
    for step in (10, 20):
      handle.write(json.dumps({"step": step, "eval_perplexity": 100.0 / step,
                               "eval_loss": 1.0 / step, "eval_bleu": float(step)}) + "\n")
  return 0


def test_runner_records_results_and_skips_finished_points(tmp_path):
  definition = small_sweep([{"name": "base", "overrides": {}},
                            {"name": "wide", "overrides": {"model.d_ff": 128}},
                            {"name": "deep", "overrides": {"model.encoder_layers": 3}}])
  definition["reference"] = {"wide": {"perplexity": 4.75, "bleu": 26.2}}
  calls = []
  launcher = lambda job, log: calls.append(job.argv()) or fake_complete_training(job, log)
  assert sweep.run_sweep(definition, str(tmp_path), only={"base", "wide"},
                         launcher=launcher) == ["base", "wide"]
  assert "--config.model.d_ff=128" in calls[1]
  # Restarted: the finished points are skipped.
  assert sweep.run_sweep(definition, str(tmp_path), launcher=launcher) == ["deep"]
  rows = report.read_results(str(tmp_path))
  assert [r["point"] for r in rows] == ["base", "wide", "deep"]
  assert rows[1]["eval_bleu"] == 20.0 and rows[1]["steps"] == 20 and rows[1]["params"] > 0
  assert rows[1]["reference"] == {"perplexity": 4.75, "bleu": 26.2} and "reference" not in rows[0]
  with pytest.raises(sweep.SweepError, match="--only: no point"):
    sweep.run_sweep(definition, str(tmp_path), only={"nope"}, launcher=launcher)


def test_a_raised_budget_extends_finished_points_and_a_lowered_one_is_an_error(tmp_path):
  assert sweep.run_sweep(small_sweep([{"name": "base", "overrides": {}}]), str(tmp_path),
                         launcher=fake_complete_training) == ["base"]
  longer = small_sweep([{"name": "base", "overrides": {"train.num_steps": 40}}])
  path = os.path.join(str(tmp_path), sweep.RESULTS)
  first = json.loads(open(path).read())
  with open(path, "w") as handle:  # as if the 20-step run had taken 1,000 s
    handle.write(json.dumps({**first, "wall_seconds": 1000.0}) + "\n")

  def resume_to_40(job, log_path):
    workdir = job.workdir
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as handle:
      handle.write(json.dumps({"step": 40, "eval_perplexity": 2.0, "eval_loss": 0.5}) + "\n")
    os.makedirs(os.path.join(workdir, "checkpoints", "40"), exist_ok=True)
    return 0

  assert sweep.run_sweep(longer, str(tmp_path), launcher=resume_to_40) == ["base"]
  with open(path) as handle:
    rows = [json.loads(line) for line in handle]
  assert [row["steps"] for row in rows] == [20, 40]  # history kept; the report reads the last
  assert rows[1]["extended_from_steps"] == 20
  assert 1000.0 <= rows[1]["wall_seconds"] < 1100.0  # both runs' time
  assert report.read_results(str(tmp_path))[0]["eval_perplexity"] == 2.0
  assert sweep.run_sweep(longer, str(tmp_path), launcher=resume_to_40) == []
  with pytest.raises(sweep.SweepError, match=r"point\(s\) base in .* more steps than the sweep"):
    sweep.run_sweep(small_sweep([{"name": "base", "overrides": {}}]), str(tmp_path),
                    launcher=fake_complete_training)


def test_a_cooled_down_point_is_not_extended(tmp_path):
  cooled = small_sweep([{"name": "base", "overrides": {"train.cooldown_steps": 5}}])
  assert sweep.run_sweep(cooled, str(tmp_path), launcher=fake_complete_training) == ["base"]
  ran = []
  longer = small_sweep([{"name": "base", "overrides": {"train.cooldown_steps": 5,
                                                       "train.num_steps": 40}}])
  with pytest.raises(sweep.SweepError, match=r"point\(s\) base in .* finished a learning-rate "
                                             r"cooldown"):
    sweep.run_sweep(longer, str(tmp_path), launcher=lambda job, log: ran.append(job.argv()) or 0)
  assert ran == []


def test_failed_point_is_not_recorded(tmp_path):
  with pytest.raises(sweep.PointFailed, match="point 'base' failed"):
    sweep.run_sweep(small_sweep([{"name": "base", "overrides": {}}]), str(tmp_path),
                    launcher=lambda job, log: 1)
  assert sweep.finished(str(tmp_path)) == set()


def test_report_rows_in_table_order():
  names = ["A_h16", "C_d1024", "base", "A_h4", "C_d256", "A_h1", "D_drop0.2", "D_drop0.0"]
  assert sorted(names, key=report.table_order) == [
      "base", "A_h1", "A_h4", "A_h16", "C_d256", "C_d1024", "D_drop0.0", "D_drop0.2"]


def test_report_from_fabricated_results(tmp_path):
  rows = [{"point": "base", "overrides": {"model.d_model": 512, "model.num_heads": 8},
           "params": 63_000_000, "eval_perplexity": 4.92, "eval_bleu": 25.8, "steps": 100,
           "wall_seconds": 120.0},
          {"point": "A_h1", "overrides": {"model.d_model": 512, "model.num_heads": 1},
           "params": 63_000_000, "eval_perplexity": 5.37, "eval_bleu": 24.9, "steps": 100,
           "wall_seconds": 60.0, "reference": {"perplexity": 5.29, "bleu": 24.8}}]
  with open(tmp_path / "results.jsonl", "w") as handle:
    handle.writelines(json.dumps(r) + "\n" for r in rows)
  path = report.write_report(str(tmp_path))
  text = open(path).read()
  # only the columns some row sets: d_model and h
  assert "|  | d_model | h | seeds | PPL (dev) |" in text
  assert "| base | 512 | 8 |" in text and "| 1 | 4.92 | 25.8 |  |  | - | - | 63.0 | 2.0 |" in text
  assert "| ref. PPL | ref. BLEU |" in text
  a_row = next(line for line in text.splitlines() if line.startswith("| A_h1"))
  assert "| 1 |" in a_row and "512" not in a_row  # only what the row changes
  assert "| 1 | 5.37 | 24.9 | +0.45 | -0.9 | 5.29 | 24.8 | 63.0 | 1.0 |" in a_row
  for image in ("bleu_vs_params.png", "validation_curves.png", "bleu_curves.png"):
    assert os.path.getsize(tmp_path / image) > 1000


def test_overlapping_labels_are_stacked_apart_and_others_stay_put():
  # Row A's variants share base's size; a label starting 0.1 to the right still overlaps them,
  # one starting past their width does not, nor one far below.
  points = [(1.9, 36.5), (1.9, 37.3), (1.0, 33.6), (1.9, 36.6), (2.0, 36.6), (2.5, 36.6),
            (1.9, 30.0)]
  widths = [0.5] * len(points)
  heights = report.label_heights(points, widths, gap=1.0)
  assert heights == pytest.approx([36.5, 39.5, 33.6, 37.5, 38.5, 36.6, 30.0])

  def overlap(i, j):
    (xi, _), (xj, _) = points[i], points[j]
    return xi < xj + widths[j] and xj < xi + widths[i]
  for i in range(len(points)):
    assert heights[i] >= points[i][1]
    for j in range(i):
      assert not overlap(i, j) or abs(heights[i] - heights[j]) >= 1.0 - 1e-9
  assert report.label_heights([], [], gap=1.0) == []


def test_report_without_results_is_a_one_line_error(tmp_path):
  process = subprocess.run([sys.executable, "-m", "experiments.report", f"--root={tmp_path}"],
                           cwd=REPO, capture_output=True, text=True, check=False)
  assert process.returncode == 2 and "Traceback" not in process.stderr
  assert process.stderr.strip() == (f"error: --root: {tmp_path / 'results.jsonl'}: "
                                    "no sweep results there")


def test_report_draws_an_early_sweep_beside_and_names_a_wrong_early_root(tmp_path):
  def write(root, bleu, steps):
    os.makedirs(root)
    with open(root / "results.jsonl", "w") as handle:
      handle.writelines(json.dumps({"point": point, "overrides": {}, "params": 1_000_000,
                                    "eval_perplexity": 5.0, "eval_bleu": value, "steps": steps,
                                    "wall_seconds": 60.0}) + "\n" for point, value in bleu.items())
  write(tmp_path / "long", {"base": 30.0, "A_h1": 29.0}, 6000)
  write(tmp_path / "early", {"base": 12.0}, 600)
  plain = report.write_report(str(tmp_path / "long"), str(tmp_path / "plain"))
  both = report.write_report(str(tmp_path / "long"), str(tmp_path / "both"),
                             str(tmp_path / "early"))
  assert "Hollow markers" not in open(plain).read()
  assert f"the same points in {tmp_path / 'early'} (600 steps)" in open(both).read()
  assert (os.path.getsize(tmp_path / "both" / "bleu_vs_params.png")
          != os.path.getsize(tmp_path / "plain" / "bleu_vs_params.png"))
  process = subprocess.run([sys.executable, "-m", "experiments.report",
                            f"--root={tmp_path / 'long'}", f"--early_root={tmp_path}",
                            f"--output={tmp_path / 'cli'}"],
                           cwd=REPO, capture_output=True, text=True, check=False)
  assert process.returncode == 2 and "Traceback" not in process.stderr
  assert process.stderr.strip() == (f"error: --early_root: {tmp_path / 'results.jsonl'}: "
                                    "no sweep results there")


def test_rows_keep_the_validation_history_and_the_curves_outlive_the_run_directory(tmp_path):
  records = [{"step": 100, "loss": 3.0}, {"step": 250, "eval_perplexity": 9.0, "eval_loss": 2.2},
             {"step": 500, "eval_perplexity": 8.0, "eval_bleu": 1.0},
             {"step": 250, "eval_perplexity": 8.5, "eval_loss": 2.1}]  # resumed before 500
  assert sweep.validation_history(records) == [
      {"step": 250, "eval_perplexity": 8.5, "eval_loss": 2.1},
      {"step": 500, "eval_perplexity": 8.0, "eval_bleu": 1.0}]
  sweep.run_sweep(small_sweep([{"name": "base", "overrides": {}}]), str(tmp_path / "sweep"),
                  launcher=fake_complete_training)
  row = report.read_results(str(tmp_path / "sweep"))[0]
  assert [(r["step"], r["eval_bleu"]) for r in row["validation"]] == [(10, 10.0), (20, 20.0)]
  shutil.rmtree(tmp_path / "sweep" / "base")  # a later session without the run directory
  assert report.plot_curves(str(tmp_path / "sweep"), [row], str(tmp_path / "b.png"),
                            "eval_bleu") == ["base"]


def test_bleu_curves_draw_the_points_that_measured_bleu(tmp_path):
  for point, records in {"base": [{"step": 5, "eval_perplexity": 9.0, "eval_bleu": 1.0},
                                  {"step": 10, "eval_perplexity": 7.0, "eval_bleu": 2.5}],
                         "A_h1": [{"step": 10, "eval_perplexity": 8.0, "eval_bleu": None}]}.items():
    os.makedirs(tmp_path / point)
    with open(tmp_path / point / "metrics.jsonl", "w") as handle:
      handle.writelines(json.dumps(r) + "\n" for r in records)
  rows = [{"point": "base"}, {"point": "A_h1"}, {"point": "C_N2"}]  # C_N2: no metrics yet
  assert report.plot_curves(str(tmp_path), rows, str(tmp_path / "p.png")) == ["base", "A_h1"]
  assert report.plot_curves(str(tmp_path), rows, str(tmp_path / "b.png"), "eval_bleu") == ["base"]


def fake_complete_training(job, log_path):
  """fake_training plus the final checkpoint a finished run leaves."""
  fake_training(job, log_path)
  workdir = job.workdir
  os.makedirs(os.path.join(workdir, "checkpoints", "20"), exist_ok=True)
  return 0


def test_seeds_repeat_points_and_the_report_shows_their_spread(tmp_path):
  definition = small_sweep([{"name": "base", "overrides": {}},
                            {"name": "wide", "overrides": {"model.d_ff": 128}}])
  calls = []
  launcher = lambda job, log: calls.append(job.argv()) or fake_complete_training(job, log)
  ran = sweep.run_sweep(definition, str(tmp_path), only={"base"}, launcher=launcher,
                        seeds=[0, 1, 2])
  assert sorted(ran) == ["base", "base@seed1", "base@seed2"]
  plain = next(argv for argv in calls if argv[4].endswith(os.sep + "base"))
  assert not any(arg.startswith("--config.seed") for arg in plain)  # the config's own seed
  seeded = next(argv for argv in calls if any("base@seed2" in a for a in argv))
  assert "--config.seed=2" in seeded
  rows = {r["point"]: r for r in report.read_results(str(tmp_path))}
  assert rows["base@seed2"]["seed"] == 2 and rows["base"]["seed"] == 0
  assert rows["base"]["config"]["train"]["num_steps"] == 20
  with pytest.raises(sweep.SweepError, match="--only: no point"):
    sweep.run_sweep(definition, str(tmp_path), only={"nope"}, launcher=launcher, seeds=[0, 1])
  bleu = {"base": 20.0, "base@seed1": 22.0, "base@seed2": 24.0}  # mean 22, std 2
  rows = [{**rows[name], "eval_bleu": value} for name, value in bleu.items()]
  rows += [{**rows[0], "point": "wide", "overrides": {"model.d_ff": 128}, "eval_bleu": 23.5},
           {**rows[0], "point": "deep", "overrides": {"model.d_ff": 256}, "eval_bleu": 25.0},
           {**rows[0], "point": "tall", "overrides": {"model.d_ff": 512}, "eval_bleu": 26.5}]
  table = report.markdown_table(rows)
  assert "| 3 |" in table and "22.0 ± 2.0" in table
  # Ties within twice the spread of 2.0: +1.5 and +3.0 are ties, +4.5 is not.
  assert "+1.5 (tie)" in table and "+3.0 (tie)" in table and "+4.5 |" in table


def test_a_point_without_its_final_checkpoint_is_retried_then_fails(tmp_path):
  attempts = []
  launcher = lambda job, log: attempts.append(job) or fake_training(job, log)  # exits 0 early
  with pytest.raises(sweep.PointFailed, match=r"failed 3 time\(s\) \(last: no checkpoint of step "
                                              r"20\)"):
    sweep.run_sweep(small_sweep([{"name": "base", "overrides": {}}]), str(tmp_path),
                    launcher=launcher, retries=2)
  assert len(attempts) == 3 and sweep.finished(str(tmp_path)) == set()
  codes = iter([1, 0])
  retried = lambda job, log: next(codes) or fake_complete_training(job, log)
  assert sweep.run_sweep(small_sweep([{"name": "base", "overrides": {}}]), str(tmp_path),
                         launcher=retried, retries=1) == ["base"]
  assert report.read_results(str(tmp_path))[0]["attempts"] == 2


def fake_finish(job, log_path):
  """Training as fake_complete_training; `--mode=average`/`evaluate` as transformer.main writes."""
  workdir = job.workdir
  if job.mode == "average":
    os.makedirs(os.path.join(workdir, "averaged", "20"), exist_ok=True)
    return 0
  if job.mode == "evaluate":
    checkpoint = next(flag.split("=", 1)[1] for flag in job.extra_flags
                      if flag.startswith("--checkpoint_dir="))
    if not os.path.isdir(checkpoint):
      return 1
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", "val.averaged.step20.beam4.json"), "w") as handle:
      json.dump({"bleu": 31.5, "split": "val", "sentences": 1014, "step": 20,
                 "checkpoint": checkpoint}, handle)
    return 0
  return fake_complete_training(job, log_path)


def test_finish_commands_average_and_evaluate_after_training(tmp_path):
  definition = small_sweep([{"name": "base", "overrides": {"model.d_ff": 64}}])
  definition["finish"] = table3.get_sweep("cpu_converged")["finish"]
  calls = []
  launcher = lambda job, log: calls.append(job.argv()) or fake_finish(job, log)
  assert sweep.run_sweep(definition, str(tmp_path), launcher=launcher) == ["base"]
  workdir = os.path.join(str(tmp_path), "base")
  assert len(calls) == 3
  assert calls[1][-2:] == ["--config.eval.num_average=5", "--mode=average"]
  assert calls[2][-3:] == ["--config.eval.split=val", "--mode=evaluate",
                           f"--checkpoint_dir={workdir}/averaged"]
  assert all("--config.model.d_ff=64" in call for call in calls)  # the point's own flags
  row = report.read_results(str(tmp_path))[0]
  assert row["final_eval"]["bleu"] == 31.5 and row["final_eval"]["sentences"] == 1014
  raw = sweep.recorded_rows(str(tmp_path))["base"]
  assert sweep.done_line(raw) == (
      f"done base: dev perplexity {raw['eval_perplexity']:.3f}, BLEU in training "
      f"{raw['eval_bleu']:.2f}, final BLEU 31.50 (val, 1014 sentences, {workdir}/averaged)")
  assert sweep.done_line({"point": "x", "eval_perplexity": None, "eval_bleu": 2.0}) == (
      "done x: dev perplexity -, BLEU in training 2.00")


def test_a_failing_finish_command_fails_the_attempt(tmp_path):
  definition = small_sweep([{"name": "base", "overrides": {}}])
  definition["finish"] = [["--mode=evaluate", "--checkpoint_dir={workdir}/averaged"]]
  with pytest.raises(sweep.PointFailed, match=r"last: exit 1 of `.*--mode=evaluate"):
    sweep.run_sweep(definition, str(tmp_path), launcher=fake_finish, retries=1)
  assert sweep.finished(str(tmp_path)) == set()


def test_report_uses_the_final_evaluation_and_names_points_needing_seeds(tmp_path):
  def row(point, bleu, final=None, perplexity=5.0, **overrides):
    return {"point": point, "overrides": {"model.d_ff": 64, **overrides}, "params": 1_000_000,
            "eval_perplexity": perplexity, "eval_bleu": bleu, "steps": 20, "wall_seconds": 60.0,
            **({"final_eval": {"bleu": final, "sentences": 1014}} if final else {})}
  rows = [row("base", 20.0, 30.0, 5.0), row("base@seed1", 21.0, 31.0, 5.1, seed=1),
          row("base@seed2", 22.0, 32.0, 5.2, seed=2),  # 5.10 +- 0.10, averaged BLEU 31.0 +- 1.0
          row("close", 20.0, 32.5, 5.5, **{"model.d_ff": 32}),  # BLEU 1.5 < 2 x 1.0
          row("far", 20.0, 34.0, 4.8, **{"model.d_ff": 128}),  # 3.0 >= 2 x 1.0; PPL 0.3 >= 0.2
          row("flat", 20.0, 28.0, 5.25, **{"model.d_ff": 256}),  # BLEU far, PPL 0.15 < 0.2
          row("pair", 20.0, 30.0, 6.0, **{"model.d_ff": 512}),  # two seeds, BLEU 30.5 a tie
          row("pair@seed1", 20.0, 31.0, 6.0, seed=1, **{"model.d_ff": 512}),
          row("drifted", 20.0, 29.2, 6.0, **{"model.d_ff": 1024}),  # seed 0: -1.8, a tie
          row("drifted@seed1", 20.0, 28.0, 6.0, seed=1, **{"model.d_ff": 1024}),  # now -2.4
          *(row(f"trio@seed{s}", 20.0, 31.0, 6.0, seed=s, **{"model.d_ff": 16})
            for s in range(3))]  # a tie on three seeds: called
  with open(tmp_path / "results.jsonl", "w") as handle:
    handle.writelines(json.dumps(r) + "\n" for r in rows)
  results = report.read_results(str(tmp_path))
  assert [r["eval_bleu"] for r in results] == [30.0, 31.0, 32.0, 32.5, 34.0, 28.0,
                                               30.0, 31.0, 29.2, 28.0, 31.0, 31.0, 31.0]
  assert results[0]["training_bleu"] == 20.0
  # drifted: no longer a tie on two seeds, but its first seed tied, so it gets its third.
  assert report.points_needing_seeds(results) == ["close", "flat", "pair", "drifted"]
  text = open(report.write_report(str(tmp_path))).read()
  assert "31.0 ± 1.0" in text and "5.10 ± 0.10" in text
  assert "averaged checkpoint decoded on the whole validation" in text
  assert ("on fewer than 3 seeds, to run with more seeds: close, drifted, flat, pair "
          "(`--only=close,drifted,flat,pair --seeds=0,1,2`)") in text
  lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
  assert "| +0.40 | +1.5 (tie) |" in lines["| close"]
  assert "| -0.30 | +3.0 |" in lines["| far"]
  assert "| +0.15 (tie) | -3.0 |" in lines["| flat"]
  assert "| +0.90 | -2.4 |" in lines["| drifted"]
  assert "PPL / BLEU vs base: (tie) when the difference is within 2x the larger seed" in text


def test_wall_time_comes_from_the_trainer_log_across_resumed_sessions(tmp_path):
  def two_sessions(job, log_path):  # stopped at step 20 and resumed from the checkpoint at 10
    workdir = job.workdir
    records = [{"step": 10, "steps_per_sec": 1.0, "interval_seconds": 100.0},
               {"step": 10, "eval_loss": 0.5, "validation_seconds": 30.0},
               {"step": 20, "steps_per_sec": 1.0, "interval_seconds": 100.0},
               {"step": 20, "steps_per_sec": 1.0, "interval_seconds": 120.0},
               {"step": 20, "eval_loss": 0.4, "eval_perplexity": 1.5, "validation_seconds": 40.0}]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as handle:
      handle.writelines(json.dumps(r) + "\n" for r in records)
    os.makedirs(os.path.join(workdir, "checkpoints", "20"), exist_ok=True)
    return 0

  sweep.run_sweep(small_sweep([{"name": "base", "overrides": {}}]), str(tmp_path),
                  launcher=two_sessions)
  row = report.read_results(str(tmp_path))[0]
  assert row["wall_seconds"] == 100.0 + 30.0 + 100.0 + 120.0 + 40.0
  assert row["wall_source"] == "trainer log"
  old_style = [{"step": 10, "steps_per_sec": 1.0}, {"step": 10, "validation_seconds": 5.0}]
  assert sweep.logged_seconds(old_style) is None  # falls back to the invocation's time
