"""Train-step speed: our jitted JAX step against two peers, interleaved in one run.

    pip install -e '.[bench]'   # CPU torch: see benchmarks/README.md
    python -m benchmarks.train_speed [--sizes tiny,small,base] [--shapes 16x32,8x256] \
        [--steps 10] [--rounds 3]

Peers, each at its best: (1) `torch_peer.py`, `torch.nn.TransformerEncoderLayer`/
`TransformerDecoderLayer` stacks with the same sizes (post-LN, ReLU, dropout 0.1, tied embeddings,
sinusoidal positions), Adam with `fused=True` (its fastest CPU implementation), every core,
eager and `torch.compile`; (2) `flax_peer.py`, a plain Flax Linen model of the same size from the
framework's own layers (no packing, segment ids or metrics) jitted by the same XLA. Same Adam
(0.9, 0.98, 1e-9), label smoothing 0.1, batch of B x (L + L) tokens. Ours runs with the threefry
and the rbg dropout PRNG (`config.train.prng_impl`). Rounds alternate between all variants so
that machine noise hits each; the median round counts and the spread (min-max) is kept. MFU =
model FLOPs per step (transformer/flops.py, the same math for every framework) / time / peak,
the peak being the best of a large JAX and a large torch matmul measured in this run (both are
reported). Peak memory is each framework's resident-set growth while training, measured in a
child process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

import transformer  # noqa: F401  (first: a quiet JAX start-up with the CUDA plugin installed)
import jax
import numpy as np

from experiments.configs import common
from transformer import flops, sharding, steps, training

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SIZES = {"tiny": (64, 4, 256, 2), "small": (256, 4, 1024, 3), "base": (512, 8, 2048, 6),
         "big": (1024, 16, 4096, 6)}
VOCAB, BATCH, LENGTH = 8000, 16, 32
# Batch shapes (rows x tokens per side): the paper-sized toy batch, and Multi30k's real one
# (experiments/configs/multi30k.py packs 8 rows of 256 target and 248 source tokens).
SHAPES = {"16x32": (16, 32), "8x256": (8, 256)}


def random_pair(batch: int, length: int, vocab: int = VOCAB) -> tuple[np.ndarray, np.ndarray]:
  """Fixed random (source, target) ids `[batch, length]` shared by every framework."""
  generator = np.random.RandomState(0)
  return tuple(generator.randint(3, vocab, (batch, length)).astype(np.int32) for _ in range(2))


def jax_setup(size: str, prng_impl: str = "threefry2x32", batch_size: int = BATCH,
              length: int = LENGTH, vocab: int = VOCAB, train_overrides: dict | None = None,
              **model_overrides):
  """(config, setup, initial state, batch) of our train step at `size` on one device."""
  d_model, heads, d_ff, layers = SIZES[size]
  config = common.base_config()
  config.model.update(dict(vocab_size=vocab, d_model=d_model, num_heads=heads, d_ff=d_ff,
                           encoder_layers=layers, decoder_layers=layers, **model_overrides))
  config.data.update(dict(packed_length=length, batch_size=batch_size))
  config.train.update(train_overrides or {})
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  config.train.prng_impl = prng_impl
  setup = steps.make_setup(config, devices=jax.devices()[:1])
  state = steps.initial_state(setup)
  batch = {k: np.array(v) for k, v in training.dummy_batch(batch_size, length).items()}
  for feature, ids in zip(("inputs", "targets"), random_pair(batch_size, length, vocab)):
    batch[feature] = ids
    batch[f"{feature}_segmentation"][:] = 1
    batch[f"{feature}_position"][:] = np.arange(length)
  return config, setup, state, sharding.global_batch(batch, setup.mesh)


def timed_runner(advance: Callable[[Any], tuple[Any, Any]], state: Any) -> Callable[[int], float]:
  """k -> seconds of k calls of `advance` (state -> (new state, outputs)), threading the state
  from call to call; run once before it is returned (compilation and first-call costs)."""
  holder = {"state": state}

  def steps(k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
      holder["state"], outputs = advance(holder["state"])
    jax.block_until_ready(outputs)
    return time.perf_counter() - start

  steps(1)
  return steps


def jax_step(size: str, prng_impl: str = "threefry2x32", shape: tuple[int, int] = (BATCH, LENGTH),
             train_overrides: dict | None = None, **model_overrides):
  """(run k steps -> seconds, model FLOPs per step, compiled bytes) for our train step.

  MFU counts model FLOPs (transformer/flops.py, the usual definition) for every framework."""
  config, setup, state, batch = jax_setup(size, prng_impl, *shape,
                                          train_overrides=train_overrides, **model_overrides)
  compiled = steps.compiled_train_step(setup, config).lower(state, batch).compile()
  flops = steps.model_flops_per_step(setup, config)
  memory = compiled.memory_analysis()
  footprint = memory.temp_size_in_bytes + memory.argument_size_in_bytes
  return timed_runner(lambda current: compiled(current, batch), state), flops, footprint


def flax_step(size: str, shape: tuple[int, int] = (BATCH, LENGTH)):
  """(run k steps -> seconds) for the plain Flax Linen peer."""
  from benchmarks import flax_peer

  source, target = random_pair(*shape)
  step, state = flax_peer.make_step(VOCAB, *SIZES[size], source, target)
  return timed_runner(flax_peer.state_threading(step, source, target), state)


def torch_step(size: str, use_compile: bool, shape: tuple[int, int] = (BATCH, LENGTH),
               vocab: int = VOCAB, device: str = "cpu"):
  """(run k steps -> seconds) for the PyTorch peer at its best: fused Adam, and every core on
  a CPU or bfloat16 autocast on a CUDA GPU."""
  import torch
  from torch import nn

  from benchmarks import torch_peer

  if device == "cpu":
    torch_peer.use_all_cores()
  torch.manual_seed(0)
  d_model, heads, d_ff, layers = SIZES[size]
  batch_size, length = shape
  model = torch_peer.Peer(vocab, d_model, heads, d_ff, layers, max_len=length).to(device)
  # fused=True: one kernel over all parameters on CPU too (the default is a per-tensor loop).
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                               fused=True)
  source, target = (torch.from_numpy(ids).long().to(device)
                    for ids in random_pair(batch_size, length, vocab))
  decoder_input = torch.cat([torch.zeros(batch_size, 1, dtype=torch.long, device=device),
                             target[:, :-1]], dim=1)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
      logits = model(source, decoder_input)
      loss = nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), target.reshape(-1),
                                         label_smoothing=0.1)
    loss.backward()
    optimizer.step()

  step = torch.compile(train_step) if use_compile else train_step
  synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def steps(k: int) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(k):
      step()
    synchronize()
    return time.perf_counter() - start

  steps(2)  # warm-up (and compilation)
  return steps


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict[str, float]:
  """FLOP/s of a large float32 matmul in JAX and in torch (best of three tries each)."""
  import torch

  from benchmarks import torch_peer

  torch_peer.use_all_cores()

  def torch_peak() -> float:
    a = torch.ones(size, size)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
      a @ a
    return 2 * size**3 * repeats / (time.perf_counter() - start)

  return {"jax": max(flops.measured_cpu_peak_flops(size, repeats) for _ in range(3)),
          "torch": max(torch_peak() for _ in range(3))}


def peak_rss_growth(size: str, framework: str, steps: int) -> int:
  """Bytes by which training grows a fresh process's peak resident set (child process).

  Read from /proc/self/status (VmHWM), which starts afresh at exec; getrusage's ru_maxrss would
  carry over the parent's peak.
  """
  code = ("from benchmarks import train_speed as t; before = t.high_water_mark(); "
          f"f = t.jax_step({size!r})[0] if {framework!r} == 'jax' else t.torch_step({size!r}, "
          f"False); f({steps}); print(t.high_water_mark() - before)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else -1


def high_water_mark() -> int:
  """This process's peak resident set so far, in bytes (Linux)."""
  with open("/proc/self/status") as status:
    line = next(line for line in status if line.startswith("VmHWM:"))
  return int(line.split()[1]) * 1024


def runners_for(size: str, shape: tuple[int, int], torch_compile: str) -> dict:
  """Every variant's (k -> seconds) runner for one row, and (model FLOPs, compiled bytes)."""
  ours, flops, footprint = jax_step(size, "threefry2x32", shape)
  runners = {"jax_threefry2x32": ours, "jax_rbg": jax_step(size, "rbg", shape)[0],
             "flax_plain": flax_step(size, shape)}
  variants = {"eager": False, "compile": True}
  if torch_compile != "auto":
    variants = {"compile" if torch_compile == "yes" else "eager": torch_compile == "yes"}
  for name, use_compile in variants.items():
    try:
      runners[f"torch_{name}"] = torch_step(size, use_compile, shape)
    except Exception as error:  # torch.compile needs a working C++ toolchain
      print(f"torch {name} unavailable: {error}", file=sys.stderr)
  return runners, flops, footprint


def measure_row(size: str, shape_name: str, steps: int, rounds: int, peak: float,
                torch_compile: str) -> dict:
  """Interleaved rounds of every variant at one size and batch shape -> a result row."""
  shape = SHAPES[shape_name]
  runners, flops, footprint = runners_for(size, shape, torch_compile)
  tokens_per_step = shape[0] * shape[1] * 2
  k = max(2, round(steps * BATCH * LENGTH / (shape[0] * shape[1])))  # ~equal tokens per round
  rates = {name: [] for name in runners}
  for _ in range(rounds):
    for name, runner in runners.items():
      rates[name].append(tokens_per_step * k / runner(k))
  median = {name: float(np.median(values)) for name, values in rates.items()}
  best = lambda prefix: max((n for n in median if n.startswith(prefix)), key=median.get)
  ours, peer, flax_rate = best("jax"), best("torch"), median["flax_plain"]
  mfu = lambda rate: flops * rate / tokens_per_step / peak
  default_shape = shape_name == next(iter(SHAPES))
  return {"size": size, "shape": shape_name, "tokens_per_step": tokens_per_step,
          "flops_per_step": flops, "steps_per_round": k,
          "jax_variant": ours, "jax_tokens_per_sec": median[ours],
          "torch_variant": peer, "torch_tokens_per_sec": median[peer],
          "flax_tokens_per_sec": flax_rate,
          "ratio_torch": median[ours] / median[peer], "ratio_flax": median[ours] / flax_rate,
          "jax_mfu": mfu(median[ours]), "torch_mfu": mfu(median[peer]),
          "flax_mfu": mfu(flax_rate), "jax_compiled_bytes": footprint,
          "jax_peak_rss_growth": peak_rss_growth(size, "jax", 3) if default_shape else None,
          "torch_peak_rss_growth": peak_rss_growth(size, "torch", 3) if default_shape else None,
          "rates_median": median,
          "rates_spread": {n: [min(v), max(v)] for n, v in rates.items()}}


def markdown(rows: list[dict]) -> str:
  """The README table: medians with the spread of the rounds."""
  spread = lambda r, name: "{:,.0f}-{:,.0f}".format(*r["rates_spread"][name])
  lines = ["| size | batch | ours tok/s (variant; spread) | plain Flax tok/s (spread) | "
           "torch tok/s (variant; spread) | vs torch | vs Flax | MFU ours / Flax / torch |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['size']} | {r['shape']} | {r['jax_tokens_per_sec']:,.0f} "
        f"({r['jax_variant'][4:]}; {spread(r, r['jax_variant'])}) | "
        f"{r['flax_tokens_per_sec']:,.0f} ({spread(r, 'flax_plain')}) | "
        f"{r['torch_tokens_per_sec']:,.0f} ({r['torch_variant'][6:]}; "
        f"{spread(r, r['torch_variant'])}) | {r['ratio_torch']:.2f}x | {r['ratio_flax']:.2f}x | "
        f"{r['jax_mfu']:.0%} / {r['flax_mfu']:.0%} / {r['torch_mfu']:.0%} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,small,base")
  parser.add_argument("--shapes", default="16x32,8x256",
                      help="batch shapes; 8x256 (Multi30k's batch) runs for small and base only")
  parser.add_argument("--steps", type=int, default=10, help="per round at 16x32 (scaled by size)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--torch_compile", choices=["auto", "yes", "no"], default="auto")
  args = parser.parse_args()
  peaks = matmul_peak()
  peak = max(peaks.values())
  rows = []
  for shape_name in args.shapes.split(","):
    for size in args.sizes.split(","):
      if shape_name != "16x32" and size == "tiny":
        continue
      rows.append(measure_row(size, shape_name, args.steps, args.rounds, peak,
                              args.torch_compile))
      r = rows[-1]
      print(f"{size} {shape_name}: ours {r['jax_tokens_per_sec']:,.0f} tok/s, flax "
            f"{r['flax_tokens_per_sec']:,.0f}, torch {r['torch_tokens_per_sec']:,.0f}", flush=True)
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "train_speed.json"), "w") as handle:
    json.dump({"machine": f"{os.cpu_count()} CPU cores", "matmul_peak_flops": peaks,
               "versions": versions(), "rows": rows}, handle, indent=2)
  print(f"matmul peak: {peak / 1e9:.0f} GFLOP/s (jax {peaks['jax'] / 1e9:.0f}, torch "
        f"{peaks['torch'] / 1e9:.0f})")
  print(markdown(rows))


def versions() -> dict[str, str]:
  """Versions of the frameworks compared."""
  import flax
  import torch
  return {"jax": jax.__version__, "flax": flax.__version__, "torch": torch.__version__}


if __name__ == "__main__":
  main()
