"""The benchmarks' own arithmetic, against independent references."""

import json
import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import step_profile
from tests.helpers import REPO
from tests.test_tf_free import hiding


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


def test_step_levers_table_sinusoids_replace_the_computed_ones_exactly():
  from benchmarks import step_levers
  from transformer.config import ModelConfig
  from transformer.layers import PositionalEncoding

  config = ModelConfig(vocab_size=32, d_model=16, num_heads=2, d_ff=32, encoder_layers=1,
                       decoder_layers=1)
  module = PositionalEncoding(config)
  x = jnp.zeros((1, 40, 16))
  with flax.linen.intercept_methods(step_levers.table_sinusoid_encoding):
    encoded = module.apply({}, x)
  position, i = np.arange(40)[:, None], np.arange(8)[None, :]
  angle = position / 10000 ** (2 * i / 16)  # PE(pos, 2i) = sin, PE(pos, 2i + 1) = cos
  expected = np.stack([np.sin(angle), np.cos(angle)], -1).reshape(40, 16)
  np.testing.assert_allclose(np.asarray(encoded[0]), expected, atol=1e-6)


def test_step_levers_byte_masks_keep_a_multiple_of_one_256th():
  from benchmarks import step_levers

  dropout = flax.linen.Dropout(0.1)
  with flax.linen.intercept_methods(step_levers.byte_mask_dropout):
    out = np.asarray(dropout.apply({}, jnp.ones((400, 250)), deterministic=False,
                                   rngs={"dropout": jax.random.PRNGKey(0)}))
  kept = out != 0
  np.testing.assert_allclose(out[kept], 256 / 230, rtol=1e-6)  # round(0.9 * 256) = 230
  assert abs(kept.mean() - 230 / 256) < 0.005


def test_gpu_check_times_a_flag_set_in_a_child_process():
  """The GPU check's XLA flag sets run in a fresh process each: on CPU, the quick shape."""
  from benchmarks import gpu_check
  step_ms = gpu_check.flag_set_step_ms((), gpu_check.QUICK, gpu=False, rounds=1, num_steps=1)
  assert "error" not in step_ms, step_ms
  assert 0 < step_ms["min"] <= step_ms["median"] <= step_ms["max"]


# What the lent GPU machine lacks of our dependencies, besides ml_collections (carried as a wheel).
ABSENT_ON_THE_GPU_MACHINE = ("tensorflow", "tensorflow_datasets", "clu", "grain", "array_record",
                             "sacremoses", "tensorboardX", "gcsfs", "ctranslate2", "libtpu")


@pytest.mark.slow
def test_gpu_session_script_rehearses_on_cpu(tmp_path):
  """`bash benchmarks/gpu_session.sh --quick`: every part of the GPU check, tiny, with the modules
  the GPU machine lacks hidden, and no error recorded anywhere in its report (a GPU session has
  minutes, not retries)."""
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(hiding(ABSENT_ON_THE_GPU_MACHINE))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=str(site), PYTHON=sys.executable, OUT=str(tmp_path / "out"))
  result = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--quick", "--rounds=1",
                           "--steps=1"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "gpu_cpu.json").read_text())
  assert '"error"' not in json.dumps(report), json.dumps(report, indent=1)[:3000]
  assert report["sections_done"] == ["correctness", "train tiny", "decoding_beam4",
                                     "xla_flag_sets"]
  assert report["decoding_beam4"]["sentences_per_second"] > 0
  assert "train tiny done" in (tmp_path / "out" / "gpu_session.log").read_text()
