"""Levers on our train step, each timed against the step as it is, in interleaved rounds.

    python -m benchmarks.step_levers [--size base] [--shape 16x32] [--steps 3] [--rounds 3]
        [--only=8-bit,bfloat16,fused]

Every variant is the project's train step as the CPU configs run it (`training.train_step`'s
math, rbg dropout masks) with one thing changed: the dropout PRNG (JAX's default threefry),
dropout masks from 8-bit random numbers, the Adam first moment in bfloat16 (optax's
`mu_dtype`), the optimizer (optax's adam without the zero weight decay; one hand-fused
tree_map Adam; the whole update on one concatenated vector with `optax.flatten`, a few large
element-wise loops instead of one per parameter tensor), the metrics computed in the step, the
label-smoothed loss through a one-hot of the vocabulary (the old formulation), accuracy
through `argmax` (the old formulation), batches
without segment ids (padding masks only), sinusoids from a precomputed table. Prints the median
time per step, the spread of the rounds and the speed-up against the current step; writes
`results/step_levers_SIZE_SHAPE[_ONLY...].json`. XLA flags are separate processes: run this
script under `XLA_FLAGS=...` and compare the printed "current" rows.

The 8-bit masks and the sinusoid table replace a module's method through Flax's public method
interceptors (`nn.intercept_methods`) while the variant is traced; nothing global is patched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax

from benchmarks import train_speed
from transformer import layers, losses, training


def fused_adam(schedule: optax.Schedule, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9
               ) -> optax.GradientTransformation:
  """Adam as one function per parameter (moments and update in a single tree_map)."""

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return jnp.zeros([], jnp.int32), zeros(), zeros()

  def update(grads, state, params=None):
    count, mu, nu = state
    step = (count + 1).astype(jnp.float32)
    rate = schedule(count)

    def leaf(g, m, v):
      m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
      return -rate * (m / (1 - b1**step)) / (jnp.sqrt(v / (1 - b2**step)) + eps), m, v

    out = jax.tree.map(leaf, grads, mu, nu)
    part = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=lambda t: isinstance(t, tuple))
    return part(0), (count + 1, part(1), part(2))

  return optax.GradientTransformation(init, update)


def one_hot_loss(logits, targets, weights, label_smoothing):
  """The previous formulation: smoothed one-hot targets times the log-softmax."""
  vocab = logits.shape[-1]
  confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
  loss = -jnp.sum(soft * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1) - entropy
  return jnp.sum(loss * weights), jnp.sum(weights)


def argmax_accuracy(logits, targets, weights):
  """The previous formulation of the accuracy."""
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)


def table_sinusoids(positions, d_model):
  """Sinusoids gathered from a precomputed `[512, d_model]` table."""
  angles = np.arange(512)[:, None] / 10000 ** (np.arange(0, d_model, 2) / d_model)
  table = np.stack([np.sin(angles), np.cos(angles)], -1).reshape(512, d_model)
  return jnp.take(jnp.asarray(table, jnp.float32), positions, axis=0)


def table_sinusoid_encoding(next_fun, args, kwargs, context):
  """Flax method interceptor: the training-time sinusoidal `PositionalEncoding` adds sinusoids
  gathered from a table instead of computing them."""
  module = context.module
  if (not isinstance(module, layers.PositionalEncoding) or context.method_name != "__call__"
      or module.decode or module.config.positional_encoding != "sinusoidal"):
    return next_fun(*args, **kwargs)
  x = args[0]
  positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
  if positions is None:
    positions = jnp.arange(x.shape[1])[None, :]
  return x + table_sinusoids(positions, module.config.d_model).astype(x.dtype)


def byte_mask_dropout(next_fun, args, kwargs, context):
  """Flax method interceptor: `nn.Dropout` with masks that compare 8-bit random numbers (a
  quarter of the random bits of `bernoulli`'s float32 uniforms); the keep probability is
  rounded to a multiple of 1/256."""
  module = context.module
  if not isinstance(module, nn.Dropout) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  inputs = args[0]
  deterministic = nn.merge_param("deterministic", module.deterministic,
                                 kwargs.get("deterministic", args[1] if len(args) > 1 else None))
  if module.rate == 0.0 or deterministic:
    return inputs
  threshold = round((1.0 - module.rate) * 256)
  keep = jax.random.bits(module.make_rng(module.rng_collection), inputs.shape,
                         jnp.uint8) < threshold
  return jnp.where(keep, inputs * (256 / threshold), jnp.zeros_like(inputs))


def variant(size: str, shape: tuple[int, int], prng_impl: str = "rbg",
            optimizer: str = "project", metrics: bool = True, segments: bool = True,
            loss: Callable = losses.label_smoothed_cross_entropy,
            accuracy: Callable = losses.accuracy,
            interceptors: tuple[Callable, ...] = ()) -> Callable[[int], float]:
  """A compiled step with the given changes -> (k -> seconds for k steps); `interceptors`
  (Flax method interceptors) change modules while the step is traced."""
  _, setup, state, batch = train_speed.jax_setup(size, prng_impl, *shape)
  chosen = {"project": setup.optimizer,
            "optax.adam": optax.adam(setup.schedule, b1=0.9, b2=0.98, eps=1e-9),
            "bfloat16 first moment": optax.adam(setup.schedule, b1=0.9, b2=0.98, eps=1e-9,
                                                 mu_dtype=jnp.bfloat16),
            "fused": fused_adam(setup.schedule),
            "flattened": optax.flatten(setup.optimizer)}[optimizer]
  state = state.replace(opt_state=chosen.init(state.params))
  if not segments:
    batch = {k: v for k, v in batch.items() if k in ("inputs", "targets")}

  def step(state, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=prng_impl), state.step)
    weights = training.target_weights(batch)

    def loss_fn(params):
      logits = training.teacher_forced(params, batch, setup.model, key)
      loss_sum, weight_sum = loss(logits, batch["targets"], weights, 0.1)
      return loss_sum / jnp.maximum(weight_sum, 1.0), (logits, loss_sum)

    (_, (logits, loss_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = chosen.update(grads, state.opt_state, state.params)
    out = {"loss_sum": loss_sum}
    if metrics:
      out.update(correct=accuracy(logits, batch["targets"], weights)[0],
                 grad_norm=optax.global_norm(grads))
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), out

  with contextlib.ExitStack() as stack:
    for interceptor in interceptors:
      stack.enter_context(nn.intercept_methods(interceptor))
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
  return train_speed.timed_runner(lambda current: compiled(current, batch), state)


VARIANTS: dict[str, dict[str, Any]] = {
    "current": {},
    "threefry dropout PRNG (JAX's default)": {"prng_impl": "threefry2x32"},
    "8-bit dropout masks": {"interceptors": (byte_mask_dropout,)},
    "bfloat16 Adam first moment": {"optimizer": "bfloat16 first moment"},
    "8-bit masks + bfloat16 first moment": {"interceptors": (byte_mask_dropout,),
                                            "optimizer": "bfloat16 first moment"},
    "optax.adam (no zero weight decay)": {"optimizer": "optax.adam"},
    "one fused tree_map Adam": {"optimizer": "fused"},
    "optax.flatten: Adam over one flat vector": {"optimizer": "flattened"},
    "no metrics in the step": {"metrics": False},
    "loss through a one-hot (old)": {"loss": one_hot_loss},
    "accuracy through argmax (old)": {"accuracy": argmax_accuracy},
    "no segment ids (padding masks only)": {"segments": False},
    "sinusoids from a table": {"interceptors": (table_sinusoid_encoding,)},
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="base", choices=sorted(train_speed.SIZES))
  parser.add_argument("--shape", default="16x32", choices=sorted(train_speed.SHAPES))
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--only", default="",
                      help="comma-separated words; only variants whose name holds one of them "
                           "(and the current step) are timed")
  args = parser.parse_args()
  shape = train_speed.SHAPES[args.shape]
  words = [word for word in args.only.split(",") if word]
  chosen = {name: changes for name, changes in VARIANTS.items()
            if name == "current" or not words or any(word in name for word in words)}
  runners = {name: variant(args.size, shape, **changes) for name, changes in chosen.items()}
  times: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(args.rounds):  # interleaved: machine noise hits every variant
    for name, runner in runners.items():
      times[name].append(runner(args.steps) / args.steps)
  current = float(np.median(times["current"]))
  rows = {name: {"ms": 1e3 * float(np.median(t)), "spread_ms": [1e3 * min(t), 1e3 * max(t)],
                 "speedup": current / float(np.median(t))} for name, t in times.items()}
  os.makedirs(train_speed.RESULTS, exist_ok=True)
  suffix = "".join(f"_{word}" for word in words)  # a subset's run keeps the others' files
  path = os.path.join(train_speed.RESULTS, f"step_levers_{args.size}_{args.shape}{suffix}.json")
  with open(path, "w") as handle:
    json.dump({"size": args.size, "shape": args.shape, "xla_flags": os.environ.get("XLA_FLAGS", ""),
               "variants": rows}, handle, indent=2)
  print(f"| {args.size} {args.shape} | ms per step (spread) | speed-up vs current |")
  print("|---|---|---|")
  for name, row in rows.items():
    print(f"| {name} | {row['ms']:.1f} ({row['spread_ms'][0]:.0f}-{row['spread_ms'][1]:.0f}) | "
          f"{row['speedup']:.3f}x |")


if __name__ == "__main__":
  main()
