"""Ahead-of-time compilation for Cloud TPU slices (libtpu, no TPU), FLOPs, MFU and the cache."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from transformer import aot, flops, hlo_cost, sharding, steps, tpu_slices
from transformer.config import ModelConfig
from transformer.model import Transformer

import tiny_config as tiny_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**mesh):
  config = tiny_config_file.get_config()
  config.mesh.update(mesh)
  config.data.update(eval_batch_size=8, max_eval_length=16)
  config.decode.extra_length = 8
  return config


def test_accelerator_types_map_to_topologies():
  expected = {"v4-8": ("v4:2x2x1", 4, 1), "v4-32": ("v4:2x2x4", 16, 4),
              "v5litepod-8": ("v5e:2x4", 8, 1), "v5litepod-16": ("v5e:4x4", 16, 4),
              "v5p-8": ("v5p:2x2x1", 4, 1), "v6e-8": ("v6e:2x4", 8, 1),
              "v6e-32": ("v6e:4x8", 32, 8)}
  for name, (topology, chips, hosts) in expected.items():
    found = tpu_slices.get_slice(name)
    assert (found.topology_name, found.chips, found.hosts) == (topology, chips, hosts), name
  with pytest.raises(ValueError, match=r"--topology: unknown TPU accelerator type 'v4-7'; "
                                       r"known: v4-8, v4-16"):
    tpu_slices.get_slice("v4-7")


def _dot_flops(jaxpr) -> int:
  """2 * M * N * K summed over every dot_general of a jaxpr, sub-jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(
          np.prod([lhs[axis] for axis in contracting]))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _dot_flops(inner)
  return total


@pytest.mark.parametrize("fields", [
    dict(),
    dict(d_k=6, d_v=10, encoder_layers=3, decoder_layers=1, d_ff=40, vocab_size=50),
])
def test_model_flops_equal_the_matmuls_the_forward_pass_runs(fields):
  config = ModelConfig(**{**dict(vocab_size=97, d_model=32, num_heads=4, d_ff=64,
                                 encoder_layers=2, decoder_layers=2, max_len=64), **fields})
  model = Transformer(config)
  rows, source_length, target_length = 3, 11, 7
  inputs = jnp.ones((rows, source_length), jnp.int32)
  targets = jnp.ones((rows, target_length), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), inputs, targets)["params"]
  forward = jax.make_jaxpr(lambda p: model.apply({"params": p}, inputs, targets))(params)
  assert flops.train_step_flops(config, rows, source_length, target_length) == \
      3 * _dot_flops(forward.jaxpr)


def test_global_flops_and_mfu_do_not_depend_on_the_device_count():
  config = tiny()
  counts = {}
  for devices in (jax.devices()[:1], jax.devices()):
    setup = steps.make_setup(config, devices=devices)
    compiled = aot.compile_train_step(setup, config)
    counts[len(devices)] = aot._step_report(compiled, len(devices), None)["flops_per_step"]
    assert steps.model_flops_per_step(setup, config) == steps.model_flops_per_step(
        steps.make_setup(config, devices=jax.devices()[:1]), config)
  # XLA counts work replicated on every device (the optimizer update of replicated parameters)
  # once per device; the matmuls split exactly.
  assert counts[8] == pytest.approx(counts[1], rel=0.15)
  assert counts[8] >= counts[1]
  model_flops = steps.model_flops_per_step(steps.make_setup(config), config)
  for devices in (1, 8):
    peak = flops.peak_flops(1e9, devices)
    assert peak == 1e9 * devices
    assert flops.mfu(model_flops, 10, 2.0, peak) == pytest.approx(
        model_flops * 10 / 2.0 / (1e9 * devices))


@pytest.mark.parametrize("accelerator, mesh", [
    ("v4-16", dict(data=2, fsdp=2, tensor=2)),
    pytest.param("v5litepod-8", dict(data=2, fsdp=2, tensor=2), marks=pytest.mark.slow),
])
def test_tiny_config_compiles_for_tpu_slices(accelerator, mesh):
  report = aot.compile_report(tiny(**mesh), accelerator)
  slice_ = tpu_slices.get_slice(accelerator)
  assert report["devices"] == slice_.chips == 8 and report["mesh"] == mesh
  assert report["device_kind"].startswith("TPU v")
  for step in ("train", "decode"):
    figures = report[step]
    assert figures["flops_per_step"] == figures["flops_per_device"] * 8
    assert 0 < figures["hbm_bytes_per_device"] <= figures["hbm_capacity_bytes"]
    assert figures["fits"] is True
    assert figures["modeled_step_seconds"] > 0
    # XLA's own estimate, corrected.
    assert figures["modeled_step_seconds"] == pytest.approx(
        figures["xla_optimal_seconds"] + figures["unmodeled_custom_calls"])
  # No loop in the train step, so the estimate is never below its compute/HBM lower bound; the
  # decode step is a loop (XLA counts its body once).
  assert report["train"]["while_loops"] == [] and len(report["decode"]["while_loops"]) == 1
  assert report["train"]["modeled_step_seconds"] >= report["train"]["roofline_seconds"] > 0
  # XLA's count adds element-wise work (softmax, LayerNorm, Adam) to the model's matmuls.
  assert 1.0 <= report["train"]["flops_per_step"] / report["model_flops_per_step"] <= 2.0
  assert report["modeled"] == aot.MODELED and "not measured" in aot.MODELED
  seconds = report["modeled_step_seconds"]
  assert report["modeled_tokens_per_second"] == pytest.approx(report["tokens_per_step"] / seconds)
  assert report["modeled_mfu"] == pytest.approx(
      report["model_flops_per_step"] / seconds / (8 * slice_.chip.peak_bf16_flops))
  hours = report["num_steps"] * seconds / 3600
  assert report["modeled_cost_usd_spot"] == pytest.approx(
      hours * 8 * slice_.chip.spot_usd_per_chip_hour)
  assert aot.MODELED in aot.format_report(report)


def test_multi_slice_mesh_puts_data_parallelism_across_slices():
  devices = aot.slice_devices(tpu_slices.get_slice("v5litepod-4"), num_slices=2)
  mesh = sharding.make_mesh(-1, 2, 1, devices, dcn_data=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  slices = np.vectorize(lambda device: device.slice_index)(mesh.devices)
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()  # fsdp stays inside a slice
  with pytest.raises(ValueError, match="config.mesh.dcn_data=4 but the devices come from 2"):
    sharding.make_mesh(-1, 1, 1, devices, dcn_data=4)


def test_a_step_without_an_estimate_is_a_one_line_error():
  with pytest.raises(ValueError, match=r"XLA's cost model gave -3 s for this step, -2 s after "
                                       r"correcting for unmodeled custom calls: no estimate "
                                       r"\(custom calls: ConcatBitcast; "):
    aot.modeled_seconds(-3.0, hlo_cost.parse(
        'ENTRY %main () -> f32[2] {\n'
        '  %c = f32[2]{0} custom-call(), custom_call_target="ConcatBitcast"\n'
        '}\n'))


def test_compile_mode_for_a_topology_writes_the_json(tmp_path):
  result = helpers.run_main("--mode=compile", "--topology=v5litepod-4", f"--workdir={tmp_path}",
                    "--config.data.eval_batch_size=8", "--config.data.max_eval_length=16")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "v5litepod-4 (v5e:2x2, 4 chips, 1 host(s))" in result.stdout
  assert aot.MODELED in result.stdout
  report = json.loads((tmp_path / "compile" / "v5litepod-4.json").read_text())
  for key in ("topology", "chips", "hosts", "mesh", "parameters", "tokens_per_step",
              "hbm_bytes_per_device", "hbm_capacity_bytes", "flops_per_step", "fits",
              "model_flops_per_step", "modeled_step_seconds", "modeled_tokens_per_second",
              "modeled_mfu", "modeled_train_hours", "modeled_cost_usd_on_demand",
              "modeled_cost_usd_spot", "prices", "fits"):
    assert key in report, key
  assert report["train"]["hbm_capacity_bytes"] == 16 * 2**30


def test_an_oversized_batch_is_a_one_line_error(tmp_path):
  result = helpers.run_main("--mode=compile", "--topology=v5litepod-1", f"--workdir={tmp_path}",
                    "--config.data.batch_size=1024", "--config.data.packed_length=512",
                    "--config.data.max_train_length=512", "--config.model.max_len=600",
                    "--config.model.vocab_size=32000", "--config.data.eval_batch_size=8",
                    "--config.data.max_eval_length=16")
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "the train step needs" in errors[0] and "has 16 GiB" in errors[0]
  assert "config.data.batch_size" in errors[0] and "remat_policy" in errors[0]
  report = json.loads((tmp_path / "compile" / "v5litepod-1.json").read_text())
  assert report["fits"] is False and report["train"]["hbm_bytes_per_device"] > 16 * 2**30


def test_unknown_topology_is_a_one_line_error(tmp_path):
  result = helpers.run_main("--mode=compile", "--topology=v4-9", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "error: --topology: unknown TPU accelerator type 'v4-9'; known: v4-8" in result.stderr
  assert "Traceback" not in result.stderr


def test_second_start_loads_the_train_step_from_the_compilation_cache(tmp_path):
  data_dir = tmp_path / "tfds"
  common = [f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={data_dir}",
            "--config.train.compilation_cache_dir=",  # the default: WORKDIR/compilation_cache
            "--config.train.eval_every_steps=100", "--config.train.checkpoint_every_steps=100"]
  first = helpers.run_main(*common, "--config.train.num_steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "persistent compilation cache" not in first.stdout
  assert os.listdir(tmp_path / "run" / "compilation_cache")
  second = helpers.run_main(*common, "--config.train.num_steps=4")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "loaded the compiled train step from the persistent compilation cache" in second.stdout


def test_tpu_variables_are_set_only_around_a_tpu_compile():
  """Importing the package sets no TPU_* variable beyond what importing jax itself sets; a TPU
  compile sets ours for libtpu's start-up and restores the environment afterwards."""
  code = ("import os\n"
          "tpu = lambda: sorted(k for k in os.environ if k.startswith(('TPU_', 'ALLOW_MULT')))\n"
          "import jax\n"
          "after_jax = tpu()\n"
          "import transformer\n"
          "from transformer import aot, tpu_slices\n"
          "after_import = tpu()\n"
          "aot.prepare_off_device_compilation()\n"
          "devices = aot.slice_devices(tpu_slices.get_slice('v5litepod-4'))\n"
          "print(after_jax == after_import == tpu(), 'TPU_ACCELERATOR_TYPE' in tpu(), "
          "len(devices))\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "ALLOW_MULTIPLE"))}
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == "True False 4"
