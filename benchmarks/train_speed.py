"""Train-step speed: our jitted JAX step against a PyTorch peer, interleaved in one run.

    pip install -e '.[bench]'   # CPU torch: see benchmarks/README.md
    python benchmarks/train_speed.py [--sizes tiny,small,base] [--steps 10] [--rounds 3]

The peer (`torch_peer.py`) stacks `torch.nn.TransformerEncoderLayer`/`TransformerDecoderLayer`
with the same sizes (post-LN, ReLU, dropout 0.1, tied embeddings, sinusoidal positions), the
same Adam (0.9, 0.98, 1e-9), label smoothing 0.1 and the same batch of 16 x (32 + 32) tokens; torch
uses every core and `torch.compile` when that is faster; ours runs with the threefry and the rbg
dropout PRNG (`config.train.prng_impl`), the faster shown. Rounds alternate between the two so that
machine noise hits both. MFU = (FLOPs per step from XLA's cost analysis of our step, the same
math for both) / time / peak, the peak being the best of a large jitted JAX matmul and a torch
matmul measured in this run. Peak memory is each framework's resident-set growth while
training, measured in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.configs import common  # noqa: E402
from transformer import run, sharding, training  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SIZES = {"tiny": (64, 4, 256, 2), "small": (256, 4, 1024, 3), "base": (512, 8, 2048, 6)}
VOCAB, BATCH, LENGTH = 8000, 16, 32


def jax_setup(size: str, prng_impl: str = "threefry2x32", **model_overrides):
  """(config, setup, initial state, batch) of our train step at `size` on one device."""
  d_model, heads, d_ff, layers = SIZES[size]
  config = common.base_config()
  config.model.update(dict(vocab_size=VOCAB, d_model=d_model, num_heads=heads, d_ff=d_ff,
                           encoder_layers=layers, decoder_layers=layers, **model_overrides))
  config.data.update(dict(packed_length=LENGTH, batch_size=BATCH))
  config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  config.train.prng_impl = prng_impl
  setup = run.make_setup(config, devices=jax.devices()[:1])
  state = run.initial_state(setup)
  rng = np.random.RandomState(0)
  batch = {k: np.array(v) for k, v in training.dummy_batch(BATCH, LENGTH).items()}
  for feature in ("inputs", "targets"):
    batch[feature] = rng.randint(3, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    batch[f"{feature}_segmentation"][:] = 1
    batch[f"{feature}_position"][:] = np.arange(LENGTH)
  return config, setup, state, sharding.global_batch(batch, setup.mesh)


def jax_step(size: str, prng_impl: str = "threefry2x32", **model_overrides):
  """(run k steps -> seconds, model FLOPs per step, compiled bytes) for our train step.

  MFU counts model FLOPs (transformer/flops.py, the usual definition) for both frameworks."""
  config, setup, state, batch = jax_setup(size, prng_impl, **model_overrides)
  compiled = run.compiled_train_step(setup, config).lower(state, batch).compile()
  flops = run.model_flops_per_step(setup, config)
  memory = compiled.memory_analysis()
  footprint = memory.temp_size_in_bytes + memory.argument_size_in_bytes
  holder = {"state": state}

  def steps(k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
      holder["state"], metrics = compiled(holder["state"], batch)
    metrics["loss_sum"].block_until_ready()
    return time.perf_counter() - start

  steps(1)
  return steps, flops, footprint


def torch_step(size: str, use_compile: bool):
  """(run k steps -> seconds) for the PyTorch peer."""
  import torch
  from torch import nn

  import torch_peer

  torch_peer.use_all_cores()
  torch.manual_seed(0)
  d_model, heads, d_ff, layers = SIZES[size]
  model = torch_peer.Peer(VOCAB, d_model, heads, d_ff, layers, max_len=LENGTH)
  # fused=True: one kernel over all parameters on CPU too (the default is a per-tensor loop).
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                               fused=True)
  generator = np.random.RandomState(0)
  source = torch.from_numpy(generator.randint(3, VOCAB, (BATCH, LENGTH)))
  target = torch.from_numpy(generator.randint(3, VOCAB, (BATCH, LENGTH)))
  decoder_input = torch.cat([torch.zeros(BATCH, 1, dtype=torch.long), target[:, :-1]], dim=1)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    logits = model(source, decoder_input)
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1),
                                       label_smoothing=0.1)
    loss.backward()
    optimizer.step()

  step = torch.compile(train_step) if use_compile else train_step

  def steps(k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
      step()
    return time.perf_counter() - start

  steps(2)  # warm-up (and compilation)
  return steps


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict[str, float]:
  """FLOP/s of a large float32 matmul in JAX and in torch."""
  import torch
  peaks = {"jax": run.measured_cpu_peak_flops(size, repeats)}
  a = torch.ones(size, size)
  a @ a
  start = time.perf_counter()
  for _ in range(repeats):
    a @ a
  peaks["torch"] = 2 * size**3 * repeats / (time.perf_counter() - start)
  return peaks


def peak_rss_growth(size: str, framework: str, steps: int) -> int:
  """Bytes by which training grows a fresh process's peak resident set (child process).

  Read from /proc/self/status (VmHWM), which starts afresh at exec; getrusage's ru_maxrss would
  carry over the parent's peak.
  """
  code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
          "import train_speed as t; before = t.high_water_mark(); "
          f"f = t.jax_step({size!r})[0] if {framework!r} == 'jax' else t.torch_step({size!r}, "
          f"False); f({steps}); print(t.high_water_mark() - before)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else -1


def high_water_mark() -> int:
  """This process's peak resident set so far, in bytes (Linux)."""
  with open("/proc/self/status") as status:
    line = next(line for line in status if line.startswith("VmHWM:"))
  return int(line.split()[1]) * 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,small,base")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--torch_compile", choices=["auto", "yes", "no"], default="auto")
  args = parser.parse_args()
  peaks = matmul_peak()
  peak = max(peaks.values())
  tokens_per_step = BATCH * LENGTH * 2
  rows = []
  for size in args.sizes.split(","):
    ours = {}
    ours["threefry2x32"], flops, footprint = jax_step(size, "threefry2x32")
    ours["rbg"] = jax_step(size, "rbg")[0]  # config.train.prng_impl: the dropout masks' PRNG
    variants = {"eager": False, "compile": True}
    if args.torch_compile != "auto":
      variants = {"compile" if args.torch_compile == "yes" else "eager":
                  args.torch_compile == "yes"}
    peers = {}
    for name, use_compile in variants.items():
      try:
        peers[name] = torch_step(size, use_compile)
      except Exception as error:  # torch.compile needs a working C++ toolchain
        print(f"torch {name} unavailable: {error}", file=sys.stderr)
    runners = {**{f"jax_{n}": f for n, f in ours.items()},
               **{f"torch_{n}": f for n, f in peers.items()}}
    times = {name: [] for name in runners}
    for _ in range(args.rounds):  # interleaved
      for name, runner in runners.items():
        times[name].append(runner(args.steps))
    rate = {k: tokens_per_step * args.steps / float(np.median(v)) for k, v in times.items()}
    best_jax = max((k for k in rate if k.startswith("jax")), key=rate.get)
    best_torch = max((k for k in rate if k.startswith("torch")), key=rate.get)
    step_seconds = {k: tokens_per_step / r for k, r in rate.items()}
    row = {"size": size, "tokens_per_step": tokens_per_step, "flops_per_step": flops,
           "jax_tokens_per_sec": rate[best_jax], "jax_variant": best_jax,
           "torch_tokens_per_sec": rate[best_torch],
           "torch_variant": best_torch, "ratio": rate[best_jax] / rate[best_torch],
           "jax_mfu": flops / step_seconds[best_jax] / peak,
           "torch_mfu": flops / step_seconds[best_torch] / peak,
           "jax_compiled_bytes": footprint,
           "jax_peak_rss_growth": peak_rss_growth(size, "jax", 3),
           "torch_peak_rss_growth": peak_rss_growth(size, "torch", 3),
           "all_rates": rate}
    rows.append(row)
    print(f"{size}: ours ({best_jax}) {rate[best_jax]:,.0f} tok/s, torch ({best_torch}) "
          f"{rate[best_torch]:,.0f} tok/s, ratio {row['ratio']:.2f}", flush=True)
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "train_speed.json"), "w") as handle:
    json.dump({"machine": f"{os.cpu_count()} CPU cores", "matmul_peak_flops": peaks,
               "batch": f"{BATCH} x ({LENGTH} + {LENGTH}) tokens", "rows": rows}, handle,
              indent=2)
  print(f"peak: {peak / 1e9:.0f} GFLOP/s (jax {peaks['jax'] / 1e9:.0f}, torch "
        f"{peaks['torch'] / 1e9:.0f})")
  print("| size | ours tok/s (variant) | torch tok/s (variant) | ratio | our MFU | torch MFU | "
        "our peak RSS growth | torch peak RSS growth |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['size']} | {r['jax_tokens_per_sec']:,.0f} ({r['jax_variant']}) | "
          f"{r['torch_tokens_per_sec']:,.0f} ({r['torch_variant']}) | {r['ratio']:.2f} | {r['jax_mfu']:.1%} | "
          f"{r['torch_mfu']:.1%} | {r['jax_peak_rss_growth'] / 2**20:.0f} MiB | "
          f"{r['torch_peak_rss_growth'] / 2**20:.0f} MiB |")


if __name__ == "__main__":
  main()
