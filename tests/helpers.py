"""Shared test helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from tests import tiny_config as tiny_config_file
from transformer import sharding, steps, training
from transformer.config import ModelConfig
from transformer.model import Transformer


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CACHE_VARIABLE = "TRANSFORMER_TESTS_COMPILATION_CACHE"


def main_command(*flags: str) -> list[str]:
  """`python -m transformer.main` on the tiny test config with `flags`. Unless `flags` name one,
  the run uses this test process's shared compilation cache (`tests/conftest.py`): the tiny
  config's steps compile once per pytest worker, not once per run."""
  shared = os.environ.get(SHARED_CACHE_VARIABLE)
  if shared and not any(f.startswith("--config.train.compilation_cache_dir=") for f in flags):
    flags = (*flags, f"--config.train.compilation_cache_dir={shared}")
  return [sys.executable, "-m", "transformer.main", "--config=tests/tiny_config.py", *flags]


def subprocess_env(devices: int = 1) -> dict[str, str]:
  """The environment of a trainer process: `devices` simulated CPU devices, quiet, unbuffered."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def run_main(*flags: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs the trainer as users do, in a subprocess from the repository root."""
  return subprocess.run(main_command(*flags), cwd=REPO, env=subprocess_env(devices),
                        capture_output=True, text=True, timeout=timeout)


def dirs(workdir, data_dir) -> list[str]:
  """The flags naming a run's workdir and its tfds data_dir."""
  return [f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]


def random_tokens(seed: int, shape: tuple[int, ...], vocab_size: int, low: int = 3) -> jnp.ndarray:
  """Random non-special token ids in [low, vocab_size)."""
  return jnp.asarray(np.random.RandomState(seed).randint(low, vocab_size, shape), jnp.int32)


def init_params(config: ModelConfig, source_length: int = 7, target_length: int = 5,
                seed: int = 0):
  """Unboxed float parameters of a Transformer with `config`."""
  model = Transformer(config)
  inputs = jnp.ones((1, source_length), jnp.int32)
  targets = jnp.ones((1, target_length), jnp.int32)
  variables = model.init(jax.random.PRNGKey(seed), inputs, targets)
  return model, nn.unbox(variables["params"])


def count(tree) -> int:
  """Number of scalars in a pytree of arrays or shape structs."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# Independent NumPy references of the paper's formulas.

def numpy_attention(q, k, v, mask):
  """softmax(Q K^T / sqrt(d_k)) V per batch element and head, written with plain loops."""
  batch, q_len, heads, d_k = q.shape
  out = np.zeros((batch, q_len, heads, v.shape[-1]))
  for b in range(batch):
    for h in range(heads):
      logits = q[b, :, h] @ k[b, :, h].T / np.sqrt(d_k)
      logits = np.where(mask[b, 0], logits, -np.inf)
      weights = np.exp(logits - logits.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      out[b, :, h] = weights @ v[b, :, h]
  return out


def numpy_multi_head_attention(params, x_q, x_kv, mask):
  """Concat(head_1..head_h) W^O + b with head_i = Attention(x_q W^Q_i, x_kv W^K_i, x_kv W^V_i)."""
  p = jax.tree.map(np.asarray, params)
  project = lambda x, name: np.einsum("bld,dhk->blhk", x, p[name]["kernel"]) + p[name]["bias"]
  heads = numpy_attention(project(x_q, "query"), project(x_kv, "key"), project(x_kv, "value"),
                          mask)
  concatenated = heads.reshape(*x_q.shape[:2], -1)
  return concatenated @ p["out"]["kernel"].reshape(concatenated.shape[-1], -1) + p["out"]["bias"]


def numpy_layer_norm(x, params, epsilon=1e-6):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + epsilon) * np.asarray(params["scale"]) + np.asarray(
      params["bias"])


def numpy_feed_forward(x, params):
  """max(0, x W1 + b1) W2 + b2."""
  p = jax.tree.map(np.asarray, params)
  hidden = np.maximum(0.0, x @ p["wi"]["kernel"] + p["wi"]["bias"])
  return hidden @ p["wo"]["kernel"] + p["wo"]["bias"]


# Runs of the tiny config.

def tiny_config(data_dir, **train):
  """The tiny test config with its tfds data in `data_dir` and `train` fields changed."""
  config = tiny_config_file.get_config()
  config.data.data_dir = str(data_dir)
  config.train.update(train)
  return config


def train_tiny(workdir, data_dir, changes: dict[str, object]):
  """Trains the tiny config with `changes` ({"section.field": value}) in a one-device trainer
  process (a test process's 8 simulated devices take about twice as long); returns the config
  that run used, for in-process evaluation of `workdir`."""
  result = run_main(*dirs(workdir, data_dir),
                    *(f"--config.{key}={value}" for key, value in changes.items()))
  assert result.returncode == 0, result.stderr[-3000:]
  config = tiny_config(data_dir)
  for key, value in changes.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def fixed_batches(count, rows=16, length=32, seed=0):
  """`count` packed-format batches of random sentences, the same for every call."""
  rng = np.random.RandomState(seed)
  batches = []
  for _ in range(count):
    batch = {k: np.array(v) for k, v in training.dummy_batch(rows, length).items()}
    for feature in ("inputs", "targets"):
      lengths = rng.randint(4, length, rows)
      for row, n in enumerate(lengths):
        batch[feature][row, :n] = rng.randint(3, 128, n)
        batch[f"{feature}_segmentation"][row, :n] = 1
        batch[f"{feature}_position"][row, :n] = np.arange(n)
    batches.append(batch)
  return batches


def losses_on_mesh(config, mesh_shape, devices, batches):
  """Per-step training losses on `batches` with the given mesh."""
  config = config.copy_and_resolve_references()
  config.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh_shape)))
  setup = steps.make_setup(config, devices=devices)
  state = steps.initial_state(setup)
  step = steps.compiled_train_step(setup, config)
  result = []
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, setup.mesh))
    result.append(float(metrics["loss_sum"]) / float(metrics["weight"]))
  return result, state


def logged_losses(workdir):
  """step -> training loss, the last record winning (a resumed run repeats steps)."""
  result = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as handle:
    for line in handle:
      record = json.loads(line)
      if "loss" in record:
        result[record["step"]] = record["loss"]
  return result


def wait_for(predicate, timeout=120):
  """Polls `predicate` until it holds; TimeoutError after `timeout` seconds."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    time.sleep(0.02)
  raise TimeoutError("condition not reached")


def max_logged_step(workdir):
  """The last step with a logged training loss (0 before the first)."""
  try:
    return max(logged_losses(workdir), default=0)
  except (FileNotFoundError, json.JSONDecodeError):
    return 0


# Hypotheses and references the multi-process worker scores, split unevenly between processes.
SCORED_PAIRS = (["the cat sat on the mat", "a dog runs fast", "hello there friend",
                 "seven thousand three hundred", "the quick brown fox jumps"],
                ["the cat sat on a mat", "the dog runs fast", "hello there my friend",
                 "seven thousand three hundred two", "a quick brown fox jumped"])
