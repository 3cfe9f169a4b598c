"""Input-pipeline throughput on Multi30k next to the base model's train-step throughput.

    python benchmarks/input_pipeline.py [--steps 5] [--batches 200]

Both rates count real (non-pad) source + target tokens per second, measured in one run on this
machine. The pipeline must never starve the step (goal: >= 5x the step's rate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.configs import multi30k  # noqa: E402
from transformer import sharding, steps  # noqa: E402
from transformer.data import datasets, inputs  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def real_tokens(batch: dict[str, np.ndarray]) -> int:
  """Non-pad tokens of both sides of a packed batch."""
  return int(np.sum(batch["inputs_segmentation"] > 0) + np.sum(batch["targets_segmentation"] > 0))


def pipeline_rate(config, builder, tokenizer, batches: int) -> float:
  """Tokens/s of packed batches coming out of tf.data (after a warm-up batch)."""
  iterator = inputs.train_dataset(builder, config, tokenizer).as_numpy_iterator()
  next(iterator)
  start, tokens = time.perf_counter(), 0
  for _ in range(batches):
    tokens += real_tokens(next(iterator))
  return tokens / (time.perf_counter() - start)


def step_rate(config, builder, tokenizer, num_steps: int) -> float:
  """Tokens/s of the jitted train step of the paper's base model on the same batches."""
  setup = steps.make_setup(config, tokenizer.vocab_size)
  state = steps.initial_state(setup)
  step = steps.compiled_train_step(setup, config)
  batches = inputs.train_dataset(builder, config, tokenizer).as_numpy_iterator()
  batch = next(batches)
  state, metrics = step(state, sharding.global_batch(batch, setup.mesh))  # compile
  metrics["loss_sum"].block_until_ready()
  start, tokens = time.perf_counter(), 0
  for _ in range(num_steps):
    batch = next(batches)
    state, metrics = step(state, sharding.global_batch(batch, setup.mesh))
    tokens += real_tokens(batch)
  metrics["loss_sum"].block_until_ready()
  return tokens / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--batches", type=int, default=200)
  args = parser.parse_args()
  config = multi30k.get_config()
  config.model.update(dict(d_model=512, num_heads=8, d_ff=2048, encoder_layers=6,
                           decoder_layers=6))  # the paper's base model
  config.data.data_dir = os.path.join(tempfile.gettempdir(), "transformer_bench_tfds")
  workdir = tempfile.mkdtemp()
  builder = datasets.prepare(config.data)
  tokenizer = inputs.get_tokenizer(builder, config, workdir)
  pipeline = pipeline_rate(config, builder, tokenizer, args.batches)
  train = step_rate(config, builder, tokenizer, args.steps)
  result = {"machine": f"{os.cpu_count()} CPU cores", "dataset": "multi30k train",
            "batch": f"{config.data.batch_size} rows x {config.data.packed_length} tokens",
            "pipeline_tokens_per_sec": pipeline, "base_train_step_tokens_per_sec": train,
            "ratio": pipeline / train}
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "input_pipeline.json"), "w") as handle:
    json.dump(result, handle, indent=2)
  print("| input pipeline tokens/s | base train step tokens/s | ratio (goal >= 5) |")
  print("|---|---|---|")
  print(f"| {pipeline:,.0f} | {train:,.0f} | {pipeline / train:.1f}x |")


if __name__ == "__main__":
  main()
