"""Attention time and memory against sequence length: reference vs. blockwise kernel.

    python -m benchmarks.attention_scaling [--max_length 8192] [--block_size 512]

Self-attention costs O(N^2) time and memory, the architecture's known weakness. The reference
kernel materializes the `[heads, N, N]` logits; the blockwise kernel (online softmax over key
blocks) keeps O(N * block) of them. Memory is XLA's compiled temporary allocation for one
forward pass (`memory_analysis().temp_size_in_bytes`), time the best of a few runs, both in one
process. Batch 1, 8 heads of 64, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

from transformer.attention import blockwise_attention, reference_attention
from transformer.plotting import pyplot

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def measure(kernel, length: int, repeats: int = 3) -> tuple[float, int]:
  """(best seconds, temporary bytes) of one jitted forward pass at `length`."""
  shape = (1, length, 8, 64)
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(3))
  compiled = jax.jit(kernel).lower(q, k, v).compile()
  memory = compiled.memory_analysis().temp_size_in_bytes
  compiled(q, k, v).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    compiled(q, k, v).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best, memory


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--max_length", type=int, default=8192)
  parser.add_argument("--block_size", type=int, default=512)
  args = parser.parse_args()
  kernels = {"reference": lambda q, k, v: reference_attention(q, k, v, None)[0],
             "blockwise": lambda q, k, v: blockwise_attention(q, k, v, None, args.block_size)}
  rows = []
  length = 128
  while length <= args.max_length:
    row = {"length": length}
    for name, kernel in kernels.items():
      row[f"{name}_seconds"], row[f"{name}_bytes"] = measure(kernel, length)
    rows.append(row)
    print(f"N={length}: " + ", ".join(f"{n} {row[f'{n}_seconds'] * 1e3:.1f} ms "
                                     f"{row[f'{n}_bytes'] / 2**20:.1f} MiB" for n in kernels),
          flush=True)
    length *= 2
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "attention_scaling.json"), "w") as handle:
    json.dump({"machine": f"{os.cpu_count()} CPU cores", "block_size": args.block_size,
               "rows": rows}, handle, indent=2)
  figure, (time_axis, memory_axis) = pyplot().subplots(1, 2, figsize=(10, 4))
  lengths = [r["length"] for r in rows]
  for name in kernels:
    time_axis.plot(lengths, [r[f"{name}_seconds"] for r in rows], marker="o", label=name)
    memory_axis.plot(lengths, [r[f"{name}_bytes"] / 2**20 for r in rows], marker="o", label=name)
  for axis, label in ((time_axis, "forward time (s)"), (memory_axis, "temporary memory (MiB)")):
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("sequence length N")
    axis.set_ylabel(label)
    axis.legend()
  figure.tight_layout()
  figure.savefig(os.path.join(RESULTS, "attention_scaling.png"), dpi=110)
  print("| N | reference ms | blockwise ms | time ratio | reference MiB | blockwise MiB "
        "| memory ratio |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['length']} | {r['reference_seconds'] * 1e3:.1f} | "
          f"{r['blockwise_seconds'] * 1e3:.1f} | "
          f"{r['blockwise_seconds'] / r['reference_seconds']:.2f} | "
          f"{r['reference_bytes'] / 2**20:.1f} | {r['blockwise_bytes'] / 2**20:.1f} | "
          f"{r['blockwise_bytes'] / max(r['reference_bytes'], 1):.3f} |")


if __name__ == "__main__":
  main()
