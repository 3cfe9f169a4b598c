"""Optimizer, schedule, train state and the pure train/eval steps (Sec. 5.3, 5.4)."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from transformer import losses
from transformer.model import Transformer

Batch = dict[str, jnp.ndarray]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and is checkpointed)."""

  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jnp.ndarray  # base dropout key's raw data; each step folds in its step number


PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def paper_learning_rate(d_model: int, warmup_steps: int, factor: float = 1.0
                        ) -> optax.Schedule:
  """lrate = factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)  (Sec. 5.3).

  Steps count from 1 as in the paper, so optax's update count 0 is step 1. Written as the
  formula rather than a join of optax's linear and decay schedules, whose float32
  interpolation is off by up to 3e-4 relative at the first steps.
  """

  def schedule(count: jnp.ndarray) -> jnp.ndarray:
    step = jnp.asarray(count, jnp.float32) + 1.0
    return factor * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

  return schedule


def cooldown_scale(count: Any, num_steps: int, cooldown_steps: int) -> jnp.ndarray:
  """The cooldown's factor at optax's update count (step - 1): min(1, (num_steps + 1 - step)
  / cooldown_steps), never below 0."""
  return jnp.clip((num_steps - count) / cooldown_steps, 0.0, 1.0)


def with_cooldown(schedule: optax.Schedule, num_steps: int, cooldown_steps: int
                  ) -> optax.Schedule:
  """`schedule` falling linearly to zero over the last `cooldown_steps` of `num_steps`.

  Step s (from 1) is scaled by min(1, (num_steps + 1 - s) / cooldown_steps): full rate before
  the cooldown, 1/cooldown_steps of it at the last step. 0 keeps `schedule` unchanged.
  """
  if cooldown_steps == 0:
    return schedule

  def cooled(count: jnp.ndarray) -> jnp.ndarray:
    count = jnp.asarray(count, jnp.float32)
    return schedule(count) * cooldown_scale(count, num_steps, cooldown_steps)

  return cooled


def cooldown_conflict(saved: tuple[int, int], current: tuple[int, int], step: int) -> str:
  """Why resuming a checkpoint at `step` would change rates it already trained with, or ''.

  `saved` and `current` are (num_steps, cooldown_steps). Different budgets share their first
  steps' rates unless a cooldown had begun by `step` (e.g. extending a cooled-down run would
  warm the rate back up).
  """
  def lowered_by(schedule: tuple[int, int]) -> bool:  # the scale only falls: test the last step
    num_steps, cooldown_steps = schedule
    return cooldown_steps > 0 and float(cooldown_scale(step - 1, num_steps, cooldown_steps)) < 1.0

  if saved == current or not (lowered_by(saved) or lowered_by(current)):
    return ""
  return (f"the checkpoint at step {step} was trained with train.num_steps={saved[0]}, "
          f"train.cooldown_steps={saved[1]}; resuming it with {current[0]}, {current[1]} "
          "changes learning rates it already cooled down with: train a new workdir")


def make_optimizer(train: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """Adam with the paper's betas/epsilon, optional clipping, weight decay and accumulation."""
  parts = []
  if train.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps,
                           weight_decay=train.weight_decay))
  optimizer = optax.chain(*parts)
  if train.grad_accum_steps > 1:
    optimizer = optax.MultiSteps(optimizer, every_k_schedule=train.grad_accum_steps)
  return optimizer


def dummy_batch(batch_size: int, length: int, inputs_length: int | None = None) -> Batch:
  """Zeros shaped like a packed training batch (for initialization and compilation)."""
  inputs_length = inputs_length or length
  shapes = {"inputs": inputs_length, "targets": length}
  batch = {}
  for feature, feature_length in shapes.items():
    for suffix in ("", "_segmentation", "_position"):
      batch[feature + suffix] = jnp.zeros((batch_size, feature_length), jnp.int32)
  return batch


def init_state(model: Transformer, optimizer: optax.GradientTransformation, seed: int,
               batch: Batch, prng_impl: str = "threefry2x32") -> TrainState:
  """Initial (boxed, logically partitioned) state; jit it with `out_shardings`.

  Parameters always come from a threefry key of `seed`; the dropout key uses `prng_impl`.
  """
  params_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(params_rng, batch["inputs"][:1], batch["targets"][:1])["params"]
  if prng_impl != "threefry2x32":
    dropout_rng = jax.random.key_data(jax.random.key(seed, impl=prng_impl))
  return TrainState(step=jnp.array(0, jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=dropout_rng)


def teacher_forced(params: Any, batch: Batch, model: Transformer,
                   dropout_rng: jax.Array | None = None, features_only: bool = False
                   ) -> jnp.ndarray:
  """The teacher-forced forward pass over a (possibly packed) batch: logits, or with
  `features_only` the decoder outputs they project; dropout iff a key is given."""
  return model.apply({"params": params}, batch["inputs"], batch["targets"],
                     inputs_segmentation=batch.get("inputs_segmentation"),
                     targets_segmentation=batch.get("targets_segmentation"),
                     inputs_positions=batch.get("inputs_position"),
                     targets_positions=batch.get("targets_position"),
                     deterministic=dropout_rng is None, features_only=features_only,
                     rngs=None if dropout_rng is None else {"dropout": dropout_rng})


def target_weights(batch: Batch) -> jnp.ndarray:
  """1 for real target tokens, 0 for padding."""
  if "targets_segmentation" in batch:
    return (batch["targets_segmentation"] > 0).astype(jnp.float32)
  return (batch["targets"] > 0).astype(jnp.float32)


def training_loss(params: Any, *, batch: Batch, model: Transformer, dropout_rng: jax.Array,
                  label_smoothing: float, loss_chunks: int = 1
                  ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]]:
  """Mean label-smoothed loss with dropout (what the step differentiates), and the sums
  `(loss, correct tokens, weight)` for the metrics. `loss_chunks > 1` projects the vocabulary
  logits a few target positions at a time (`losses.loss_and_accuracy`)."""
  features = teacher_forced(params, batch, model, dropout_rng, features_only=True)
  project = lambda chunk: model.apply({"params": params}, chunk, method=Transformer.project)
  sums = losses.loss_and_accuracy(features, batch["targets"], target_weights(batch), project,
                                  label_smoothing, loss_chunks)
  return sums[0] / jnp.maximum(sums[2], 1.0), sums


def dropout_key(rng: jnp.ndarray, step: jnp.ndarray, stored_impl: str, drawn_impl: str
                ) -> jax.Array:
  """The step's dropout key: the state's key (of `stored_impl`) folded with the step number,
  drawn with `drawn_impl`. A threefry key drawn from rbg key data uses its first two words, so
  the state (and its checkpoints) keep one shape whichever generator a mesh draws with."""
  if drawn_impl != stored_impl:
    rng = rng[..., :2]
  return jax.random.fold_in(jax.random.wrap_key_data(rng, impl=drawn_impl), step)


def train_step(state: TrainState, batch: Batch, *, model: Transformer,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               label_smoothing: float, prng_impl: str = "threefry2x32",
               dropout_prng_impl: str | None = None, loss_chunks: int = 1
               ) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimizer update on a batch: `(state, batch) -> (state, metric sums)`.

  `prng_impl` is the generator of the state's key; `dropout_prng_impl` (default the same) draws
  the masks. rbg (XLA's RngBitGenerator) is much cheaper than threefry on CPUs and GPUs, but
  its masks depend on the mesh and a sharded mesh draws the whole batch's bits on every device;
  threefry draws only each device's share (`steps.dropout_prng_impl` picks per mesh).
  """
  dropout_rng = dropout_key(state.rng, state.step, prng_impl, dropout_prng_impl or prng_impl)
  loss_fn = functools.partial(training_loss, batch=batch, model=model, dropout_rng=dropout_rng,
                              label_smoothing=label_smoothing, loss_chunks=loss_chunks)
  (_, (loss_sum, correct, weight_sum)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss_sum": loss_sum, "correct": correct, "weight": weight_sum,
             "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: Batch, *, model: Transformer, label_smoothing: float
              ) -> dict[str, jnp.ndarray]:
  """Sums of smoothed loss, negative log-likelihood and correct tokens over a batch."""
  logits = teacher_forced(params, batch, model)
  weights = target_weights(batch)
  loss_sum, weight_sum = losses.label_smoothed_cross_entropy(logits, batch["targets"], weights,
                                                             label_smoothing)
  nll_sum, _ = losses.cross_entropy(logits, batch["targets"], weights)
  correct, _ = losses.accuracy(logits, batch["targets"], weights)
  return {"loss_sum": loss_sum, "nll_sum": nll_sum, "correct": correct, "weight": weight_sum}
