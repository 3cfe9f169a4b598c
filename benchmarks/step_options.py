"""The train step's memory options on this machine's CPU, against the plain Flax peer.

    python -m benchmarks.step_options [--size base] [--shapes 8x256,16x32] [--steps 2]
        [--rounds 3] [--dtype float32]

Options (issue #60; config fields in parentheses): the vocabulary loss in chunks
(`train.loss_chunks=8`), bfloat16 logits (`model.logits_dtype`), Q K^T and the attention
probabilities in the compute dtype (`model.attention_probs_dtype=compute`), and all of them;
each against our step without them and the Flax peer (benchmarks/flax_peer.py), interleaved in
rounds so that machine noise hits each. Prints ms per step (median, spread) and the ratio to the
peer; writes `results/step_options_SIZE.json`. An option that slows this step stays off in the
CPU configs.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np


from benchmarks import train_speed

# Config changes per variant: (model fields, train fields), on top of the step without options.
WITHOUT_MODEL = {"logits_dtype": "float32", "attention_probs_dtype": "float32"}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "without options": (WITHOUT_MODEL, {"loss_chunks": 1}),
    "loss_chunks=8": (WITHOUT_MODEL, {"loss_chunks": 8}),
    "bfloat16 logits": ({**WITHOUT_MODEL, "logits_dtype": "bfloat16"}, {"loss_chunks": 1}),
    "attention probs in compute dtype": ({**WITHOUT_MODEL, "attention_probs_dtype": "compute"},
                                         {"loss_chunks": 1}),
    "all three": ({"logits_dtype": "bfloat16", "attention_probs_dtype": "compute"},
                  {"loss_chunks": 8}),
}


def measure(size: str, shape_name: str, steps: int, rounds: int, dtype: str) -> dict[str, Any]:
  """Median ms per step of every variant and the Flax peer, interleaved."""
  shape = train_speed.SHAPES[shape_name]
  runners = {name: train_speed.jax_step(size, "threefry2x32", shape, train_overrides=train,
                                        dtype=dtype, **model)[0]
             for name, (model, train) in VARIANTS.items()}
  runners["flax peer"] = train_speed.flax_step(size, shape)
  times: dict[str, list[float]] = {name: [] for name in runners}
  for round_number in range(rounds):
    for name, runner in runners.items():
      times[name].append(runner(steps) / steps)
    print(f"  {size} {shape_name}: round {round_number + 1}/{rounds} done", flush=True)
  peer = float(np.median(times["flax peer"]))
  return {name: {"ms": 1e3 * float(np.median(t)), "spread_ms": [1e3 * min(t), 1e3 * max(t)],
                 "vs_flax_peer": float(np.median(t)) / peer} for name, t in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="base", choices=sorted(train_speed.SIZES))
  parser.add_argument("--shapes", default="8x256,16x32",
                      help=f"comma-separated, of {', '.join(train_speed.SHAPES)}")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()
  unknown = sorted(set(args.shapes.split(",")) - set(train_speed.SHAPES))
  if unknown:
    parser.error(f"--shapes: unknown {', '.join(unknown)}; known: "
                 f"{', '.join(train_speed.SHAPES)}")
  results = {shape: measure(args.size, shape, args.steps, args.rounds, args.dtype)
             for shape in args.shapes.split(",")}
  os.makedirs(train_speed.RESULTS, exist_ok=True)
  path = os.path.join(train_speed.RESULTS, f"step_options_{args.size}.json")
  with open(path, "w", encoding="utf-8") as handle:
    json.dump({"size": args.size, "dtype": args.dtype, "steps": args.steps,
               "rounds": args.rounds, "versions": train_speed.versions(), "shapes": results},
              handle, indent=2)
  print(f"| {args.size} ({args.dtype}) | " + " | ".join(
      f"{shape} ms (spread) | vs Flax" for shape in results) + " |")
  print("|---|" + "---|---|" * len(results))
  for name in next(iter(results.values())):
    cells = [f"{r[name]['ms']:.0f} ({r[name]['spread_ms'][0]:.0f}-{r[name]['spread_ms'][1]:.0f})"
             f" | {r[name]['vs_flax_peer']:.2f}x" for r in results.values()]
    print(f"| {name} | " + " | ".join(cells) + " |")
  print(f"written: {path}")


if __name__ == "__main__":
  main()
