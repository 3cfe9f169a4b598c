"""Everything a run derives from its config before the first step, and the compiled steps.

`make_setup` validates the config and builds the model, optimizer, mesh and the train state's
sharded shape; `initial_state` creates parameters born sharded; `compiled_train_step` and
`compiled_eval_step` jit the pure steps of `training.py` with explicit shardings. The training
loop (`run.py`), the other modes (`modes.py`), ahead-of-time compilation (`aot.py`) and the
benchmarks share them; nothing here reads data.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from transformer import flops, sharding, training
from transformer import config as model_config_lib
from transformer.model import Transformer


@dataclasses.dataclass
class Setup:
  """Everything derived from the config before the first step."""

  mesh: Mesh
  model: Transformer
  schedule: optax.Schedule
  optimizer: optax.GradientTransformation
  state_shardings: Any
  abstract_state: Any  # ShapeDtypeStructs carrying the shardings
  init: Any  # () -> boxed initial TrainState


_POSITIVE_TRAIN_FIELDS = ("num_steps", "warmup_steps", "log_every_steps", "eval_every_steps",
                          "checkpoint_every_steps", "keep_checkpoints", "grad_accum_steps",
                          "eval_max_examples", "bleu_max_examples")
_NON_NEGATIVE_TRAIN_FIELDS = ("learning_rate_factor", "weight_decay", "grad_clip_norm",
                              "profile_steps", "peak_flops", "adam_eps")


def prng_impl(config: ml_collections.ConfigDict) -> str:
  """The dropout PRNG (configs saved before the field existed used threefry)."""
  return config.train.get("prng_impl", "threefry2x32")


def dropout_prng_impl(config: ml_collections.ConfigDict, mesh: Mesh) -> str:
  """The generator that draws the dropout masks on `mesh`.

  XLA does not partition rbg's RngBitGenerator: on a mesh of several devices each one would draw
  the whole global batch's bits. There the masks come from threefry instead, which JAX
  partitions (each device draws its share); on one device rbg is kept.
  """
  configured = prng_impl(config)
  if configured != "threefry2x32" and mesh.size > 1:
    return "threefry2x32"
  return configured


def schedule_fields(train: Any) -> tuple[int, int]:
  """(num_steps, cooldown_steps) of a train config or a checkpoint's saved one."""
  return train["num_steps"], train.get("cooldown_steps", 0)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first config field with an impossible value."""
  train = config.train
  for name in _POSITIVE_TRAIN_FIELDS:
    if train[name] <= 0:
      raise ValueError(f"config.train.{name} must be positive, got {train[name]}")
  for name in _NON_NEGATIVE_TRAIN_FIELDS:
    if train[name] < 0:
      raise ValueError(f"config.train.{name} must not be negative, got {train[name]}")
  if not 0 <= train.get("cooldown_steps", 0) <= train.num_steps:
    raise ValueError(f"config.train.cooldown_steps must be in [0, num_steps={train.num_steps}], "
                     f"got {train.cooldown_steps}")
  for name in ("adam_b1", "adam_b2", "label_smoothing"):
    if not 0.0 <= train[name] < 1.0:
      raise ValueError(f"config.train.{name} must be in [0, 1), got {train[name]}")
  chunks = train.get("loss_chunks", 1)
  if not isinstance(chunks, int) or chunks <= 0:
    raise ValueError(f"config.train.loss_chunks must be a positive integer, got {chunks!r}")
  if config.data.packed_length % chunks:
    raise ValueError(f"config.train.loss_chunks={chunks} must divide "
                     f"config.data.packed_length={config.data.packed_length}")
  if prng_impl(config) not in training.PRNG_IMPLS:
    raise ValueError(f"config.train.prng_impl must be one of {', '.join(training.PRNG_IMPLS)}, "
                     f"got {prng_impl(config)!r}")
  for name in ("batch_size", "eval_batch_size", "packed_length", "max_train_length",
               "max_eval_length", "packing_bins"):
    if config.data[name] <= 0:
      raise ValueError(f"config.data.{name} must be positive, got {config.data[name]}")
  if config.data.workers < 0:
    raise ValueError(f"config.data.workers must be 0 or more, got {config.data.workers}")
  if config.data.read_threads < -1:
    raise ValueError("config.data.read_threads must be -1 (auto) or 0 or more, got "
                     f"{config.data.read_threads}")


def make_setup(config: ml_collections.ConfigDict, vocab_size: int | None = None,
               devices: Sequence[jax.Device] | None = None) -> Setup:
  """Model, optimizer, mesh (over `devices`, default all) and the train state's sharded shape."""
  validate(config)
  fields = config.model.to_dict()
  if vocab_size is not None and vocab_size > fields["vocab_size"]:
    raise ValueError(f"config.model.vocab_size ({fields['vocab_size']}) is smaller than the "
                     f"tokenizer's {vocab_size} pieces")
  model_config = model_config_lib.from_dict(fields)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices,
                            config.mesh.get("dcn_data", 1))
  model_config_lib.check_kernel_platform(model_config, mesh.devices.flat[0].platform)
  model = Transformer(model_config)
  schedule = training.with_cooldown(
      training.paper_learning_rate(model_config.d_model, config.train.warmup_steps,
                                   config.train.learning_rate_factor),
      *schedule_fields(config.train))
  optimizer = training.make_optimizer(config.train, schedule)
  batch = training.dummy_batch(1, config.data.packed_length, config.data.packed_inputs_length)
  init = functools.partial(training.init_state, model, optimizer, config.seed, batch,
                           prng_impl(config))
  boxed = jax.eval_shape(init)
  state_shardings = sharding.tree_shardings(boxed, mesh)
  abstract_state = jax.tree.map(
      lambda leaf, shard: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=shard),
      nn.unbox(boxed), state_shardings)
  return Setup(mesh, model, schedule, optimizer, state_shardings, abstract_state, init)


def initial_state(setup: Setup) -> training.TrainState:
  """Parameters born sharded: `jax.jit(init, out_shardings=...)`."""
  return jax.jit(lambda: nn.unbox(setup.init()), out_shardings=setup.state_shardings)()


def compiled_train_step(setup: Setup, config: ml_collections.ConfigDict):
  """The train step jitted once with explicit shardings; the state buffer is donated."""
  step = functools.partial(training.train_step, model=setup.model, optimizer=setup.optimizer,
                           schedule=setup.schedule,
                           label_smoothing=config.train.label_smoothing,
                           prng_impl=prng_impl(config),
                           dropout_prng_impl=dropout_prng_impl(config, setup.mesh),
                           loss_chunks=config.train.get("loss_chunks", 1))
  replicated = NamedSharding(setup.mesh, PartitionSpec())
  return jax.jit(step, in_shardings=(setup.state_shardings, sharding.batch_sharding(setup.mesh)),
                 out_shardings=(setup.state_shardings, replicated), donate_argnums=0)


def compiled_eval_step(setup: Setup, config: ml_collections.ConfigDict):
  """The eval step, jitted with the parameters' shardings."""
  step = functools.partial(training.eval_step, model=setup.model,
                           label_smoothing=config.train.label_smoothing)
  return jax.jit(step, in_shardings=(setup.state_shardings.params,
                                     sharding.batch_sharding(setup.mesh)))


def model_flops_per_step(setup: Setup, config: ml_collections.ConfigDict) -> float:
  """Model FLOPs of one train step at the configured (padded) batch shape."""
  data = config.data
  return flops.train_step_flops(setup.model.config, data.batch_size,
                                data.packed_inputs_length or data.packed_length,
                                data.packed_length)


