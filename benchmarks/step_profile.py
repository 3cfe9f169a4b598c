"""Where the train step's time goes, from a `jax.profiler` trace: ours against the plain Flax peer.

    python -m benchmarks.step_profile [--size base] [--shape 16x32] [--steps 3]

Traces a few steps of each compiled step (perfetto JSON), takes the time of every XLA:CPU thunk
(one per fusion, dot, copy, ...) and files it under the model part its HLO `op_name` metadata
names (attention, feed-forward, layer norm, dropout, embedding/logits, loss, optimizer and
metrics: whatever has no model scope) and under its kind: matrix multiplication (XLA:CPU's YNN/
Eigen dot fusions) or element-wise. Tracing adds a fixed cost to every thunk, so the traced step
is slower than the untraced one (both printed); the shares, not the absolute times, are the
result. Beside each time: the matmul FLOPs and the bytes at the thunks' boundaries (from the
compiled HLO's shapes), as GFLOP/s and GB/s over the traced time (lower bounds). Writes
`results/step_profile_SIZE_SHAPE.json`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np


from benchmarks import flax_peer
from benchmarks import train_speed
from transformer import steps

# First matching keyword (in the lower-cased op_name) names the part.
PARTS = [("dropout", "dropout"), ("rng", "dropout"), ("random", "dropout"),
         ("norm", "layer norm"), ("attention", "attention"), ("feed_forward", "feed-forward"),
         ("dense", "feed-forward"), ("attend", "embedding + logits"),
         ("embed", "embedding + logits"), ("log_softmax", "loss"), ("cross_entropy", "loss"),
         ("positional", "positions")]
NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "$", "PjitFunction")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
               "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*?)\)(.*)$")


def _arrays(shape: str) -> list[tuple[str, list[int]]]:
  """(dtype, dims) of every array in an HLO shape (a tuple shape has several)."""
  return [(dtype, [int(d) for d in dims.split(",") if d]) for dtype, dims in ARRAY.findall(shape)]


def _bytes(shape: str) -> int:
  return sum(DTYPE_BYTES[dtype] * int(np.prod(dims)) for dtype, dims in _arrays(shape))


def instruction_costs(hlo_text: str) -> dict[str, tuple[float, int]]:
  """HLO instruction name -> (FLOPs of its dots, bytes of its operands and result), for the
  instructions that run as thunks (not those inside a fusion's computation).

  A fusion's FLOPs are those of the dots in the computation it calls (a dot is 2 x result
  elements x contracted size); everything else counts as element-wise (no FLOPs here: MFU
  counts matmul FLOPs only). Bytes are what the instruction reads and writes at its boundary.
  """
  shapes, dots, calls, operands = {}, {}, {}, {}
  computation = ""
  members: dict[str, list[str]] = collections.defaultdict(list)
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if header:
      computation = header.group(1)
      continue
    match = INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, args, attributes = match.groups()
    shapes[name] = shape
    members[computation].append(name)
    operands[name] = re.findall(r"%([\w.\-]+)", args)
    called = re.search(r"calls=%([\w.\-]+)", attributes)
    calls[name] = called.group(1) if called else None
    if opcode == "dot":
      contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attributes)
      lhs_dims = _arrays(shapes[operands[name][0]])[0][1]
      contracted = int(np.prod([lhs_dims[int(d)] for d in contracting.group(1).split(",") if d]))
      dots[name] = 2.0 * contracted * sum(int(np.prod(d)) for _, d in _arrays(shape))

  def flops(name: str) -> float:
    inner = calls.get(name)
    return dots.get(name, 0.0) + (sum(map(flops, members[inner])) if inner else 0.0)

  fused = {name for inner in set(calls.values()) if inner for name in members[inner]}
  return {name: (flops(name), _bytes(shapes[name]) + sum(
      _bytes(shapes[o]) for o in operands[name] if o in shapes))
          for name in shapes if name not in fused}


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
  text = compiled.as_text()
  names, costs = op_names(text), instruction_costs(text)
  start = time.perf_counter()
  run_steps(steps)
  untraced = (time.perf_counter() - start) / steps
  start = time.perf_counter()
  thunks = traced_thunks(run_steps, steps)
  traced = (time.perf_counter() - start) / steps
  times, counts = collections.Counter(), collections.Counter()
  flops, moved = collections.Counter(), collections.Counter()
  for name, micros in thunks:
    is_dot = name.startswith(("ynn", "xnn", "onednn")) or "dot" in name
    kind = "matmul" if is_dot else "element-wise"
    key = f"{part_of(names.get(name, ''))} / {kind}"
    times[key] += micros / 1e3 / steps
    counts[key] += 1
    thunk_flops, thunk_bytes = costs.get(name, (0.0, 0))
    flops[key] += thunk_flops / steps
    moved[key] += thunk_bytes / steps
  return {"untraced_ms": 1e3 * untraced, "traced_ms": 1e3 * traced,
          "thunks_per_step": len(thunks) // steps,
          "ms_per_step": dict(times.most_common()),
          "thunks": {k: counts[k] // steps for k in times},
          "gflop_per_step": {k: flops[k] / 1e9 for k in times},
          "gb_per_step": {k: moved[k] / 1e9 for k in times}}


def ours(size: str, shape: tuple[int, int]):
  """(compiled step, k-steps runner) of our train step."""
  config, setup, state, batch = train_speed.jax_setup(size, "rbg", *shape)
  compiled = steps.compiled_train_step(setup, config).lower(state, batch).compile()
  return compiled, train_speed.timed_runner(lambda current: compiled(current, batch), state)


def plain_flax(size: str, shape: tuple[int, int]):
  """(compiled step, k-steps runner) of the plain Flax peer."""
  source, target = train_speed.random_pair(*shape)
  step, state = flax_peer.make_step(train_speed.VOCAB, *train_speed.SIZES[size], source, target)
  compiled = step.lower(*state, source, target).compile()
  return compiled, train_speed.timed_runner(
      flax_peer.state_threading(compiled, source, target), state)


def rate(result: dict[str, Any], amount: str, key: str) -> float:
  """Per-second rate of a (part, kind)'s GFLOP or GB over its traced time (a lower bound: the
  trace adds a fixed cost to every thunk)."""
  milliseconds = result["ms_per_step"].get(key, 0.0)
  return result[amount].get(key, 0.0) / (milliseconds / 1e3) if milliseconds else 0.0


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
  print("| part / kind | ours ms (thunks; GFLOP/s, GB/s) | plain Flax ms (thunks; GFLOP/s, GB/s) |")
  print("|---|---|---|")
  for key in keys:
    cells = [f"{r['ms_per_step'].get(key, 0):.1f} ({r['thunks'].get(key, 0)}; "
             f"{rate(r, 'gflop_per_step', key):.0f}, {rate(r, 'gb_per_step', key):.1f})"
             for r in results.values()]
    print(f"| {key} | {' | '.join(cells)} |")


if __name__ == "__main__":
  main()
