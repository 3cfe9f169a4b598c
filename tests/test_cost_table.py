"""The committed TPU cost table still describes the current train step: the small `check` row
of benchmarks/tpu_cost_table.py, compiled again, gives the committed figures."""

import json
import os

import jax
import pytest

from benchmarks import tpu_cost_table
from transformer import provenance

EXACT = ("hbm_bytes_per_device", "flops_per_device", "unmodeled_custom_calls",
         "hbm_traffic_bytes_per_device")
CLOSE = ("xla_optimal_seconds", "modeled_step_seconds", "xla_bytes_accessed_per_device")


def test_the_check_row_compiles_to_the_committed_figures():
  with open(os.path.join(tpu_cost_table.OUTPUT, "check_v4-8.json"), encoding="utf-8") as handle:
    committed = json.load(handle)
  assert committed["libtpu"] == provenance.versions()["libtpu"], (
      "the committed table was compiled with another libtpu: regenerate it "
      "(python -m benchmarks.tpu_cost_table check / table / before-after)")
  # As the table script compiles: JAX's default matmul precision (conftest.py sets "highest").
  with jax.default_matmul_precision(None):
    current = tpu_cost_table.full_report("check", "dp", "v4-8")
  assert current["config_changes"] == committed["config_changes"]
  stale = "the train step changed since the TPU cost table was compiled: regenerate it " \
          "(python -m benchmarks.tpu_cost_table check / table / before-after)"
  for step in ("train", "decode"):
    for key in EXACT:
      assert current[step][key] == committed[step][key], f"{step} {key}: {stale}"
    for key in CLOSE:
      assert current[step][key] == pytest.approx(committed[step][key], rel=1e-6), \
          f"{step} {key}: {stale}"
