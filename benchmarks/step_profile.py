"""Where the train step's time goes, from a `jax.profiler` trace: ours against the plain Flax peer.

    python benchmarks/step_profile.py [--size base] [--shape 16x32] [--steps 3]

Traces a few steps of each compiled step (perfetto JSON), takes the time of every XLA:CPU thunk
(one per fusion, dot, copy, ...) and files it under the model part its HLO `op_name` metadata
names (attention, feed-forward, layer norm, dropout, embedding/logits, loss, optimizer and
metrics: whatever has no model scope) and under its kind: matrix multiplication (XLA:CPU's YNN/
Eigen dot fusions) or element-wise. Tracing adds a fixed cost to every thunk, so the traced step
is slower than the untraced one (both printed); the shares, not the absolute times, are the
result. Writes `results/step_profile_SIZE_SHAPE.json`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax_peer  # noqa: E402
import train_speed  # noqa: E402
from transformer import run  # noqa: E402

# First matching keyword (in the lower-cased op_name) names the part.
PARTS = [("dropout", "dropout"), ("rng", "dropout"), ("random", "dropout"),
         ("norm", "layer norm"), ("attention", "attention"), ("feed_forward", "feed-forward"),
         ("dense", "feed-forward"), ("attend", "embedding + logits"),
         ("embed", "embedding + logits"), ("log_softmax", "loss"), ("cross_entropy", "loss"),
         ("positional", "positions")]
NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "$", "PjitFunction")


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its `op_name` metadata (the JAX source scope)."""
  names = {}
  for line in hlo_text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"', line)
    if match:
      names[match.group(1)] = match.group(2)
  return names


def part_of(op_name: str) -> str:
  """The model part a scope belongs to; optimizer and metrics have no model scope."""
  lowered = op_name.lower()
  if "transformer" not in lowered:  # our model and the peer are both named *Transformer
    return "optimizer + metrics" if "log_softmax" not in lowered else "loss"
  scope = lowered.split("transformer", 1)[1]
  return next((part for key, part in PARTS if key in scope), "other model ops")


def traced_thunks(run_steps: Callable[[int], Any], steps: int) -> list[tuple[str, float]]:
  """(thunk name, microseconds) of every op executed in `steps` traced steps."""
  directory = tempfile.mkdtemp(prefix="step_profile_")
  jax.profiler.start_trace(directory, create_perfetto_trace=True)
  run_steps(steps)
  jax.profiler.stop_trace()
  path = sorted(glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True))[-1]
  with gzip.open(path) as handle:
    events = json.load(handle)["traceEvents"]
  return [(e["name"], e["dur"]) for e in events
          if e.get("ph") == "X" and not e["name"].startswith(NOT_OPS)]


def breakdown(compiled, run_steps: Callable[[int], Any], steps: int) -> dict[str, Any]:
  """Per-(part, kind) milliseconds per step, thunk counts, traced and untraced step times."""
  names = op_names(compiled.as_text())
  start = time.perf_counter()
  run_steps(steps)
  untraced = (time.perf_counter() - start) / steps
  start = time.perf_counter()
  thunks = traced_thunks(run_steps, steps)
  traced = (time.perf_counter() - start) / steps
  times, counts = collections.Counter(), collections.Counter()
  for name, micros in thunks:
    kind = "matmul" if name.startswith(("ynn", "xnn", "onednn")) or "dot" in name else "element-wise"
    key = f"{part_of(names.get(name, ''))} / {kind}"
    times[key] += micros / 1e3 / steps
    counts[key] += 1
  return {"untraced_ms": 1e3 * untraced, "traced_ms": 1e3 * traced,
          "thunks_per_step": len(thunks) // steps,
          "ms_per_step": dict(times.most_common()),
          "thunks": {k: counts[k] // steps for k in times}}


def ours(size: str, shape: tuple[int, int]):
  """(compiled step, k-steps runner) of our train step."""
  config, setup, state, batch = train_speed.jax_setup(size, "rbg", *shape)
  compiled = run.compiled_train_step(setup, config).lower(state, batch).compile()
  return compiled, train_speed.timed_runner(lambda current: compiled(current, batch), state)


def plain_flax(size: str, shape: tuple[int, int]):
  """(compiled step, k-steps runner) of the plain Flax peer."""
  source, target = train_speed.random_pair(*shape)
  step, state = flax_peer.make_step(train_speed.VOCAB, *train_speed.SIZES[size], source, target)
  compiled = step.lower(*state, source, target).compile()
  return compiled, train_speed.timed_runner(
      flax_peer.state_threading(compiled, source, target), state)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="base", choices=sorted(train_speed.SIZES))
  parser.add_argument("--shape", default="16x32", choices=sorted(train_speed.SHAPES))
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  shape = train_speed.SHAPES[args.shape]
  results = {name: breakdown(*build(args.size, shape), args.steps)
             for name, build in (("ours", ours), ("plain Flax", plain_flax))}
  os.makedirs(train_speed.RESULTS, exist_ok=True)
  path = os.path.join(train_speed.RESULTS, f"step_profile_{args.size}_{args.shape}.json")
  with open(path, "w") as handle:
    json.dump({"size": args.size, "shape": args.shape, **results}, handle, indent=2)
  keys = sorted({k for r in results.values() for k in r["ms_per_step"]},
                key=lambda k: -results["ours"]["ms_per_step"].get(k, 0))
  print(f"{args.size} {args.shape}: " + ", ".join(
      f"{n} {r['untraced_ms']:.0f} ms untraced / {r['traced_ms']:.0f} traced, "
      f"{r['thunks_per_step']} thunks" for n, r in results.items()))
  print("| part / kind | ours ms (thunks) | plain Flax ms (thunks) |")
  print("|---|---|---|")
  for key in keys:
    cells = [f"{r['ms_per_step'].get(key, 0):.1f} ({r['thunks'].get(key, 0)})"
             for r in results.values()]
    print(f"| {key} | {' | '.join(cells)} |")


if __name__ == "__main__":
  main()
