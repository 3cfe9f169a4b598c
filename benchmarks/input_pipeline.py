"""Input-pipeline throughput on Multi30k next to the base model's train-step throughput.

    python -m benchmarks.input_pipeline [--steps 5] [--batches 2000] [--workers 0,1,2,4]

Measured in one run on this machine: real (non-pad) source + target tokens per second of packed
Multi30k batches out of the Grain pipeline, in the trainer's process (0 workers) and with 1, 2
and 4 worker processes, and of the jitted base-model train step on the same batches (goal: the
pipeline >= 20x the step). Also the bytes of the input position a checkpoint stores, for the
Multi30k recipe and for `wmt14_base.py`'s data settings, and how many Grain workers a TPU host
would need to feed the cost table's modeled tokens/s (base, v4-8) at this machine's per-worker
rate (a modeled figure: a TPU host's cores differ from these).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


from experiments.configs import multi30k, wmt14_base
from transformer import sharding, steps
from transformer.data import datasets, inputs

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COST_ROW = os.path.join(RESULTS, "tpu_compile", "base_v4-8.json")


def real_tokens(batch: dict[str, np.ndarray]) -> int:
  """Non-pad tokens of both sides of a packed batch."""
  return int(np.sum(batch["inputs_segmentation"] > 0) + np.sum(batch["targets_segmentation"] > 0))


def pipeline_rate(config, builder, tokenizer, batches: int) -> tuple[float, float]:
  """Steady-state tokens/s of packed batches and the seconds to the first batch.

  Packing emits all its bins at once, so each worker delivers bursts of `packing_bins` rows
  and keeps them buffered: the clock starts after two bursts of every worker are drained.
  """
  start = time.perf_counter()
  stream = inputs.TrainStream(builder, config, tokenizer)
  next(stream)
  first = time.perf_counter() - start
  bursts = 2 * max(config.data.workers, 1) * config.data.packing_bins // config.data.batch_size
  for _ in range(bursts):
    next(stream)
  start, tokens = time.perf_counter(), 0
  for _ in range(batches):
    tokens += real_tokens(next(stream))
  return tokens / (time.perf_counter() - start), first


def step_rate(config, builder, tokenizer, num_steps: int) -> float:
  """Tokens/s of the jitted train step of the paper's base model on the same batches."""
  setup = steps.make_setup(config, tokenizer.vocab_size)
  state = steps.initial_state(setup)
  step = steps.compiled_train_step(setup, config)
  batches = inputs.TrainStream(builder, config, tokenizer)
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


def position_bytes(config, builder, tokenizer) -> int:
  """Bytes of the JSON input position a checkpoint stores after a few batches."""
  stream = inputs.TrainStream(builder, config, tokenizer)
  for _ in range(3):
    next(stream)
  return len(json.dumps(stream.position()))


def wmt14_data_settings(config):
  """The Multi30k config with `wmt14_base.py`'s row length, batch, bins and workers."""
  wmt = wmt14_base.get_config().data
  changed = config.copy_and_resolve_references()
  changed.data.update({key: wmt[key] for key in ("packed_length", "max_train_length",
                                                 "batch_size", "packing_bins", "workers")})
  changed.data.packed_inputs_length = 0
  return changed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5, help="timed base-model train steps")
  parser.add_argument("--batches", type=int, default=2000, help="timed pipeline batches")
  parser.add_argument("--workers", default="0,1,2,4",
                      help="comma-separated Grain worker counts to time")
  args = parser.parse_args()
  config = multi30k.get_config()
  config.model.update(dict(d_model=512, num_heads=8, d_ff=2048, encoder_layers=6,
                           decoder_layers=6))  # the paper's base model
  config.data.data_dir = os.path.join(tempfile.gettempdir(), "transformer_bench_array_record")
  workdir = tempfile.mkdtemp()
  builder = datasets.prepare(config.data)
  tokenizer = inputs.get_tokenizer(builder, config, workdir)
  rates = {}
  for workers in (int(w) for w in args.workers.split(",")):
    config.data.workers = workers
    rates[workers] = pipeline_rate(config, builder, tokenizer, args.batches)
    print(f"{workers} workers: {rates[workers][0]:,.0f} tokens/s "
          f"(first batch after {rates[workers][1]:.1f} s)", flush=True)
  config.data.workers = 0
  train = step_rate(config, builder, tokenizer, args.steps)
  positions = {"multi30k": position_bytes(config, builder, tokenizer),
               "wmt14_base data settings": position_bytes(wmt14_data_settings(config), builder,
                                                          tokenizer)}
  with open(COST_ROW) as handle:
    cost = json.load(handle)
  per_worker = rates[1][0] if 1 in rates else rates[min(rates)][0]
  needed = cost["modeled_tokens_per_second"] * 0.96  # real tokens at ~96% packing
  result = {
      "machine": f"{os.cpu_count()} CPU cores", "dataset": "multi30k train",
      "batch": f"{config.data.batch_size} rows x {config.data.packed_length} tokens",
      "pipeline": "grain", "packing_bins": config.data.packing_bins,
      "pipeline_tokens_per_sec": {str(w): rate for w, (rate, _) in rates.items()},
      "first_batch_seconds": {str(w): first for w, (_, first) in rates.items()},
      "base_train_step_tokens_per_sec": train,
      "ratio": max(rate for rate, _ in rates.values()) / train,
      "position_bytes": positions,
      "tpu_v4_8_modeled_tokens_per_sec": cost["modeled_tokens_per_second"],
      "tpu_host_workers_needed_modeled": needed / per_worker}
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "input_pipeline.json"), "w") as handle:
    json.dump(result, handle, indent=2)
  print("| Grain workers | pipeline tokens/s | first batch | x base train step |")
  print("|---|---|---|---|")
  for workers, (rate, first) in rates.items():
    print(f"| {workers} | {rate:,.0f} | {first:.1f} s | {rate / train:.0f}x |")
  print(f"\nbase train step: {train:,.0f} tokens/s; input position in a checkpoint: "
        + ", ".join(f"{name} {size:,} bytes" for name, size in positions.items()))
  print(f"modeled: a v4-8 host feeding {cost['modeled_tokens_per_second']:,.0f} tokens/s "
        f"(cost table, base) needs ~{needed / per_worker:.0f} Grain workers at this machine's "
        f"{per_worker:,.0f} tokens/s per worker")


if __name__ == "__main__":
  main()
