"""Compiling for NVIDIA GPUs without one (the CUDA plugin of `[gpu_compile]`), and GPU settings."""

import json
import os
import subprocess
import sys

import pytest

from transformer import aot, gpus

from test_aot import REPO, tiny


def test_gpu_topologies():
  one, node, two_nodes = (gpus.parse_topology(n) for n in ("h200", "h100-8", "a100-16"))
  assert (one.gpu.name, one.count, one.nodes, one.gpus_per_node) == ("h200", 1, 1, 1)
  assert (node.count, node.nodes, node.gpus_per_node) == (8, 1, 8)
  assert (two_nodes.count, two_nodes.nodes, two_nodes.gpus_per_node) == (16, 2, 8)
  assert gpus.is_gpu_topology("h100-8") and not gpus.is_gpu_topology("v4-8")
  with pytest.raises(ValueError, match=r"unknown GPU 'h300'; known: a100, h100, h200"):
    gpus.parse_topology("h300")
  with pytest.raises(ValueError, match=r"--topology=h100-12: the GPU count must be 1-8 or a "
                                       r"multiple of 8"):
    gpus.parse_topology("h100-12")


def test_gpu_environment_keeps_what_the_user_set():
  environ = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d",
             "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
  added = gpus.set_gpu_environment(environ)
  flags = environ["XLA_FLAGS"].split()
  assert "--xla_gpu_enable_latency_hiding_scheduler=false" in flags  # the user's value stands
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" not in flags
  assert "--xla_dump_to=/tmp/d" in flags and "--xla_gpu_enable_cudnn_fmha=true" in flags
  assert environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"
  assert added == {"XLA_FLAGS": "--xla_gpu_enable_cudnn_fmha=true"}
  fresh: dict[str, str] = {}
  gpus.set_gpu_environment(fresh)
  assert fresh == {"XLA_FLAGS": " ".join(gpus.RECOMMENDED_XLA_FLAGS),
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90"}


def test_xla_accepts_both_gpu_flag_sets():
  """XLA aborts at start-up on a flag it does not know: both sets must parse."""
  for flag_set in (gpus.RECOMMENDED_XLA_FLAGS, gpus.ALTERNATIVE_XLA_FLAGS):
    env = {**os.environ, "XLA_FLAGS": " ".join(flag_set)}
    result = subprocess.run([sys.executable, "-c", "import transformer, jax; "
                             "print(jax.jit(lambda x: x + 1)(1))"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "2", result.stderr


def test_tiny_config_compiles_for_eight_gpus():
  topology, mesh, kernel = "h100-8", dict(data=2, fsdp=2, tensor=2), "jax"
  config = tiny(**mesh)
  config.model.update(dtype="bfloat16", attention_kernel=kernel)
  report = aot.compile_report(config, topology)
  cluster = gpus.parse_topology(topology)
  assert report["devices"] == cluster.count and report["device_kind"] == cluster.gpu.description
  assert report["mesh"] == mesh and report["fits"] is True
  params_per_device = report["parameters"] * 4 / (mesh["fsdp"] * mesh["tensor"])
  for step in ("train", "decode"):
    figures = report[step]
    assert figures["flops_per_step"] is None  # no GPU cost model without a GPU: not invented
    assert "modeled_step_seconds" not in figures
    assert figures["hbm_capacity_bytes"] == int(cluster.gpu.hbm_bytes * 0.9)
    assert params_per_device <= figures["hbm_bytes_per_device"] <= figures["hbm_capacity_bytes"]
  # The train step holds at least the parameters and both Adam moments (float32).
  assert report["train"]["hbm_bytes_per_device"] >= 3 * params_per_device
  assert report["model_flops_per_step"] > 0 and "modeled_mfu" not in report
  assert "upper bound for 'cudnn'" not in report["note"]
  text = aot.format_report(report)
  assert "no time is modeled" in text and "GPUs" in text and "fits)" in text


def test_a_batch_too_large_for_the_gpu_does_not_fit():
  config = tiny()
  config.data.update(batch_size=2**18, packed_length=64, max_train_length=64)
  report = aot.compile_report(config, "a100")
  assert report["fits"] is False and report["train"]["fits"] is False
  with pytest.raises(aot.DoesNotFit, match=r"a100: the train step needs [\d.]+ GiB per device but "
                                           r"a NVIDIA A100-SXM4-80GB has 72 GiB"):
    aot.check_fits(report)


def test_a_cudnn_config_compiles_for_an_h200_from_the_command_line(tmp_path):
  """cuDNN's kernel cannot compile without a GPU: the `jax` kernel stands in, and says so."""
  result = subprocess.run(
      [sys.executable, "-m", "transformer.main", "--config=tests/tiny_config.py",
       "--mode=compile", "--topology=h200", f"--workdir={tmp_path}",
       "--config.model.dtype=bfloat16", "--config.model.attention_kernel=cudnn"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  assert "h200 (1x1x1, 1 GPUs, 1 host(s))" in result.stdout
  assert "(of 118.18 GiB: fits)" in result.stdout  # 0.9 x 141 GB
  assert "upper bound for 'cudnn'" in result.stdout
  report = json.loads((tmp_path / "compile" / "h200.json").read_text())
  assert report["fits"] is True and report["devices"] == 1
  assert report["device_kind"] == gpus.GPUS["h200"].description
  assert report["attention_kernel"] == "jax" and report["train"]["flops_per_step"] is None
