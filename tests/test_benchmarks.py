"""The benchmarks' own arithmetic, against independent references."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import step_profile  # noqa: E402


def test_hlo_costs_count_dot_flops_like_xla_and_boundary_bytes_by_hand():
  def two_matmuls(x, w, v):
    return (x @ w) @ v

  x, w, v = jnp.ones((16, 64)), jnp.ones((64, 32)), jnp.ones((32, 8))
  compiled = jax.jit(two_matmuls).lower(x, w, v).compile()
  costs = step_profile.instruction_costs(compiled.as_text())
  total = sum(flops for flops, _ in costs.values() if flops)
  assert total == 2 * 16 * 64 * 32 + 2 * 16 * 32 * 8
  assert total == compiled.cost_analysis()["flops"]  # XLA's own count, matmuls only here
  # The thunk that computes x @ w reads x and w and writes [16, 32] float32.
  first = [c for c in costs.values() if c[0] == 2 * 16 * 64 * 32]
  assert first and first[0][1] == 4 * (16 * 64 + 64 * 32 + 16 * 32)


def test_hlo_costs_of_tuples_and_element_wise_ops():
  text = """%fused (p0: f32[4,8]) -> (f32[4,8], bf16[2]) {
  %p0 = f32[4,8]{1,0} parameter(0)
  ROOT %t = (f32[4,8]{1,0}, bf16[2]{0}) tuple(%p0, %p0)
}

ENTRY %main (a: f32[4,8]) -> (f32[4,8], bf16[2]) {
  %a = f32[4,8]{1,0} parameter(0)
  ROOT %loop_fusion = (f32[4,8]{1,0}, bf16[2]{0}) fusion(%a), kind=kLoop, calls=%fused
}
"""
  costs = step_profile.instruction_costs(text)
  assert costs["loop_fusion"] == (0.0, 4 * 32 + 2 * 2 + 4 * 32)
  assert np.isclose(step_profile.rate({"ms_per_step": {"k": 500.0}, "gb": {"k": 2.0}}, "gb", "k"),
                    4.0)


def test_quality_training_minutes_and_average_choices():
  import quality  # noqa: E402  (benchmarks/ on the path above)

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
  import json

  import quality  # noqa: E402

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
