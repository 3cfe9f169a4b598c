"""Where our train step's time goes on this CPU: timed ablations of one step, interleaved.

    python -m benchmarks.step_breakdown [--size base] [--steps 5] [--rounds 3]

Same model and batch as `train_speed.py`. Times the full step, the step without dropout, the
step with the `rbg` PRNG for the dropout masks (XLA's RngBitGenerator instead of threefry),
forward + loss only, and forward + backward without the Adam update; the differences attribute
the step to dropout, backward and optimizer. "At peak" is the step's FLOPs (XLA cost analysis)
at the matmul peak measured in the same run: the time a perfect step would take.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import jax
import numpy as np

from benchmarks import train_speed
from transformer import flops, training

Runner = Callable[[int], float]


def partial_step(size: str, with_backward: bool) -> Runner:
  """(k -> seconds) for forward + loss, or forward + backward, without the update."""
  _, setup, state, batch = train_speed.jax_setup(size)

  def loss(params):
    return training.training_loss(params, batch=batch, model=setup.model,
                                  dropout_rng=state.rng, label_smoothing=0.1)[0]

  function = jax.jit(jax.grad(loss) if with_backward else loss)

  def steps(k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
      result = function(state.params)
    jax.block_until_ready(result)
    return time.perf_counter() - start

  steps(1)
  return steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="base", choices=sorted(train_speed.SIZES))
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  peak = flops.measured_cpu_peak_flops()
  full, step_flops, _ = train_speed.jax_step(args.size)
  runners = {"full step": full,
             "no dropout": train_speed.jax_step(args.size, dropout_rate=0.0)[0],
             "rbg dropout PRNG": train_speed.jax_step(args.size, "rbg")[0],
             "forward + loss": partial_step(args.size, with_backward=False),
             "forward + backward": partial_step(args.size, with_backward=True)}
  times: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(args.rounds):  # interleaved, so that machine noise hits every variant
    for name, runner in runners.items():
      times[name].append(runner(args.steps) / args.steps)
  ms = {name: 1e3 * float(np.median(values)) for name, values in times.items()}
  ms["at matmul peak"] = 1e3 * step_flops / peak
  derived = {"dropout": ms["full step"] - ms["no dropout"],
             "backward": ms["forward + backward"] - ms["forward + loss"],
             "Adam update + metrics": ms["full step"] - ms["forward + backward"]}
  os.makedirs(train_speed.RESULTS, exist_ok=True)
  with open(os.path.join(train_speed.RESULTS, f"step_breakdown_{args.size}.json"), "w") as out:
    json.dump({"size": args.size, "peak_flops": peak, "flops_per_step": step_flops,
               "ms_per_step": ms, "derived_ms": derived}, out, indent=2)
  print(f"{args.size}: {step_flops / 1e9:.1f} GFLOP per step, matmul peak {peak / 1e9:.0f} GFLOP/s")
  print("| variant | ms per step | share of the full step |")
  print("|---|---|---|")
  for name, value in [*ms.items(), *[(f"= {k}", v) for k, v in derived.items()]]:
    print(f"| {name} | {value:.1f} | {value / ms['full step']:.0%} |")


if __name__ == "__main__":
  main()
