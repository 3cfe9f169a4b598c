"""The training path runs without TensorFlow, tfds or clu (as on GPU machines that have none).

A subprocess blocks those modules, then builds the model, runs compiled train steps on synthetic
batches (`benchmarks/train_speed.py`'s set-up), decodes with beam search and greedy search, and
compiles the steps ahead of time. Only the data pipeline and what reads `gs://` may need them.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")

SCRIPT = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
sys.meta_path.insert(0, Blocked())
sys.path.insert(0, "benchmarks")

import jax, numpy as np
import train_speed
from transformer import aot, inference, steps

config, setup, state, batch = train_speed.jax_setup("tiny", batch_size=4, length=16)
step = steps.compiled_train_step(setup, config)
losses = []
for _ in range(3):
  state, metrics = step(state, batch)
  losses.append(float(metrics["loss_sum"]) / float(metrics["weight"]))
assert all(np.isfinite(losses)) and len(set(losses)) == 3, losses  # finite, and stepping
inputs = jax.numpy.asarray(np.asarray(batch["inputs"])[:2, :8])
for method in ("beam", "greedy"):
  options = inference.DecodeOptions(method=method, beam_size=2, extra_length=4)
  ids, scores = inference.translate_ids(setup.model, state.params, inputs, options)
  assert ids.shape[0] == 2 and np.all(np.isfinite(np.asarray(scores))), method
config.data.update(eval_batch_size=2, max_eval_length=8)
report = aot.compile_report(config)
assert report["train"]["hbm_bytes_per_device"] > 0
print("blocked:", sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
"""


def test_train_step_decoding_and_compile_run_without_tensorflow():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "blocked: []"
