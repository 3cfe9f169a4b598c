"""The training loop: owns I/O, logging, evaluation, checkpoints and preemption.

`train_and_evaluate(config, workdir)` resumes from the workdir's latest checkpoint if there is
one. The steps themselves are pure functions in `training.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tensorflow as tf
from absl import logging
from clu import metric_writers
from clu.data import dataset_iterator
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from transformer import (checkpointing, compilation_cache, evaluation, flops, guards, inference,
                         provenance, sharding, training)
from transformer import config as model_config_lib
from transformer.data import datasets, inputs
from transformer.data.tokenizer import TokenizerBase
from transformer.model import Transformer

# Dense bf16 peak FLOP/s per device, for MFU (public spec sheets).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "H100": 989e12, "H200": 989e12,
              "A100": 312e12}


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
  if prng_impl(config) not in training.PRNG_IMPLS:
    raise ValueError(f"config.train.prng_impl must be one of {', '.join(training.PRNG_IMPLS)}, "
                     f"got {prng_impl(config)!r}")
  for name in ("batch_size", "eval_batch_size", "packed_length", "max_train_length",
               "max_eval_length", "shuffle_buffer"):
    if config.data[name] <= 0:
      raise ValueError(f"config.data.{name} must be positive, got {config.data[name]}")


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
                           prng_impl=prng_impl(config))
  replicated = NamedSharding(setup.mesh, PartitionSpec())
  return jax.jit(step, in_shardings=(setup.state_shardings, sharding.batch_sharding(setup.mesh)),
                 out_shardings=(setup.state_shardings, replicated), donate_argnums=0)


def compiled_eval_step(setup: Setup, config: ml_collections.ConfigDict):
  """The eval step, jitted with the parameters' shardings."""
  step = functools.partial(training.eval_step, model=setup.model,
                           label_smoothing=config.train.label_smoothing)
  return jax.jit(step, in_shardings=(setup.state_shardings.params,
                                     sharding.batch_sharding(setup.mesh)))


def measured_cpu_peak_flops(size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a large jitted float32 matmul on this host (the CPU's practical peak): the
  fastest of `repeats` calls, so that a moment of other load does not lower it."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  fastest = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    fastest = min(fastest, time.perf_counter() - start)
  return 2 * size**3 / fastest


def corrected_peak(peak: float, achieved_flops: float, configured: float) -> float:
  """The peak to divide by: a measured CPU peak below what a train step achieved was measured
  while other work loaded the cores (MFU > 100%), so it is measured again (the larger counts)."""
  if configured > 0 or achieved_flops <= peak or jax.devices()[0].platform != "cpu":
    return peak
  return max(peak, measured_cpu_peak_flops())


def peak_flops(configured: float, num_devices: int) -> float:
  """Peak FLOP/s of `num_devices` devices together: configured per device, from the spec table,
  or measured (CPU: simulated devices share the host's cores, so the host's matmul peak)."""
  devices = jax.devices()
  if configured > 0:
    return configured * num_devices
  if devices[0].platform == "cpu":
    return measured_cpu_peak_flops()
  kind = devices[0].device_kind
  per_device = next((peak for name, peak in PEAK_FLOPS.items() if name in kind), 0.0)
  return per_device * num_devices


def model_flops_per_step(setup: Setup, config: ml_collections.ConfigDict) -> float:
  """Model FLOPs of one train step at the configured (padded) batch shape."""
  data = config.data
  return flops.train_step_flops(setup.model.config, data.batch_size,
                                data.packed_inputs_length or data.packed_length,
                                data.packed_length)


class MetricsLog:
  """JSONL file plus TensorBoard summaries (written by process 0 only)."""

  def __init__(self, workdir: str):
    self.is_writer = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.is_writer,
                                                       asynchronous=False)
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Appends one record and writes the scalars."""
    self.writer.write_scalars(step, metrics)
    if self.is_writer:
      with tf.io.gfile.GFile(self.path, "a") as handle:
        handle.write(json.dumps({"step": step, **metrics}) + "\n")

  def close(self) -> None:
    """Flushes the summaries."""
    self.writer.flush()
    self.writer.close()


def evaluate(eval_step, params: Any, evaluation: inputs.EvalSet, mesh: Mesh) -> dict[str, float]:
  """Validation loss, perplexity and accuracy over an evaluation set."""
  totals: dict[str, float] = {}
  for batch in evaluation.batches:
    features = {k: v for k, v in batch.items() if k in ("inputs", "targets")}
    sums = jax.device_get(eval_step(params, sharding.global_batch(features, mesh)))
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  weight = max(totals["weight"], 1.0)
  return {"eval_loss": totals["loss_sum"] / weight,
          "eval_perplexity": math.exp(min(totals["nll_sum"] / weight, 50.0)),
          "eval_accuracy": totals["correct"] / weight}


def bleu_metrics(setup: Setup, config: ml_collections.ConfigDict, params: Any,
                 evaluation_set: inputs.EvalSet, tokenizer: TokenizerBase) -> dict[str, Any]:
  """sacreBLEU and chrF of the configured decoding (beam search by default) on a split."""
  options = inference.DecodeOptions.from_config(config.decode)
  hypotheses, _ = evaluation.translate_eval_set(setup.model, params, evaluation_set, tokenizer,
                                                options, setup.mesh)
  return evaluation.score(hypotheses, evaluation_set.references, config.data.target_lang,
                          config.eval.bleu_style)


def prepare_inputs(config: ml_collections.ConfigDict, workdir: str):
  """Builds the dataset and tokenizer on process 0 first, then everywhere."""
  if jax.process_index() == 0:
    datasets.prepare(config.data)
    inputs.get_tokenizer(datasets.make_builder(config.data), config, workdir)
  multihost_utils.sync_global_devices("inputs prepared")
  builder = datasets.prepare(config.data)
  return builder, inputs.get_tokenizer(builder, config, workdir)


def checkpoint_metadata(config: ml_collections.ConfigDict, tokenizer: TokenizerBase) -> dict:
  """The config, tokenizer and provenance (commit, versions, devices, seed) of every checkpoint."""
  return {"config": json.loads(config.to_json_best_effort()),
          "tokenizer": checkpointing.encode_bytes(tokenizer.model_proto),
          "provenance": provenance.collect(config.seed)}


def write_provenance(workdir: str, metadata: dict) -> None:
  """`WORKDIR/provenance.json` (process 0): what sweeps copy into their results rows."""
  if jax.process_index() != 0:
    return
  with tf.io.gfile.GFile(os.path.join(workdir, "provenance.json"), "w") as handle:
    handle.write(json.dumps({**metadata["provenance"], "config": metadata["config"]}, indent=1))


def report(line: str) -> None:
  """Prints a progress line on process 0 (and logs it everywhere)."""
  logging.info("%s", line)
  if jax.process_index() == 0:
    print(line, flush=True)


def progress_line(step: int, total: int, metrics: dict[str, float], elapsed: float) -> str:
  """One console line: step, loss, accuracy, learning rate, throughput, MFU and ETA."""
  eta = (total - step) / max(metrics["steps_per_sec"], 1e-9)
  return (f"step {step}/{total} loss {metrics['loss']:.4f} acc {metrics['accuracy']:.3f} "
          f"lr {metrics['learning_rate']:.2e} | {metrics['steps_per_sec']:.2f} steps/s "
          f"{metrics['tokens_per_sec']:,.0f} tok/s MFU {metrics['mfu']:.1%} | "
          f"elapsed {elapsed / 60:.1f} min ETA {eta / 60:.1f} min")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config.train.num_steps` updates (resuming if possible); returns the last metrics."""
  tf.io.gfile.makedirs(workdir)
  compilation_cache.enable(config, workdir)
  builder, tokenizer = prepare_inputs(config, workdir)
  setup = make_setup(config, tokenizer.vocab_size)
  process_index, process_count = jax.process_index(), jax.process_count()
  train_iterator = dataset_iterator.TfDatasetIterator(
      inputs.train_dataset(builder, config, tokenizer, process_index, process_count),
      checkpoint=True)
  evaluation = inputs.eval_set(builder, config, tokenizer, config.data.eval_split, process_index,
                               process_count, max_examples=config.train.eval_max_examples)
  bleu_set = inputs.eval_set(builder, config, tokenizer, config.data.eval_split, process_index,
                             process_count, max_examples=config.train.bleu_max_examples)
  manager = checkpointing.make_manager(
      os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
      save_every=config.train.checkpoint_every_steps, best_metric=config.train.best_metric,
      best_mode=config.train.best_mode)
  metadata = checkpoint_metadata(config, tokenizer)
  write_provenance(workdir, metadata)
  latest = manager.latest_step()
  if latest is not None:
    state, saved = checkpointing.restore(manager, latest, setup.abstract_state, train_iterator)
    conflict = training.cooldown_conflict(schedule_fields(saved["config"]["train"]),
                                          schedule_fields(config.train), latest)
    if conflict:
      raise ValueError(f"{workdir}: {conflict}")
    if not guards.all_finite(state.params):
      raise FloatingPointError(f"the checkpoint at step {latest} in {workdir}/checkpoints holds "
                               "NaN or infinite parameters; delete that step's directory to "
                               "resume from an earlier one")
    report(f"resumed from the checkpoint at step {latest}")
  else:
    state = initial_state(setup)

  train_step = compiled_train_step(setup, config)
  eval_step = compiled_eval_step(setup, config)
  first_batch = sharding.global_batch(next(train_iterator), setup.mesh)
  hits_before = compilation_cache.hits()
  compiled = train_step.lower(state, first_batch).compile()
  if compilation_cache.hits() > hits_before:
    report("loaded the compiled train step from the persistent compilation cache "
           f"({compilation_cache.cache_dir(config, workdir)})")
  flops_per_step = model_flops_per_step(setup, config)
  total_peak = peak_flops(config.train.peak_flops, setup.mesh.size)
  log = MetricsLog(workdir)
  preemption = guards.Preemption()
  pending_losses: list[tuple[int, jax.Array]] = []
  accumulated: dict[str, jax.Array] = {}
  step = int(state.step)
  num_steps = config.train.num_steps
  start_time = interval_start = time.perf_counter()
  interval_steps, last_metrics = 0, {}
  batch = first_batch
  try:
    while step < num_steps:
      if config.train.profile_steps and step == 10:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      state, step_metrics = compiled(state, batch)
      step += 1
      interval_steps += 1
      pending_losses.append((step, step_metrics["loss_sum"]))
      accumulated = jax.tree.map(jnp.add, accumulated, step_metrics) if accumulated else \
          step_metrics
      if config.train.profile_steps and step == 10 + config.train.profile_steps:
        jax.profiler.stop_trace()
      last_step = step == num_steps
      if step % config.train.log_every_steps == 0 or last_step:
        guards.check_finite_losses(pending_losses, manager.latest_step())
        sums = jax.device_get(accumulated)
        elapsed = time.perf_counter() - interval_start
        weight = max(float(sums["weight"]), 1.0)
        achieved = flops_per_step * interval_steps / elapsed
        peak = corrected_peak(total_peak, achieved, config.train.peak_flops)
        if peak != total_peak:
          total_peak = peak
          report(f"re-measured the CPU matmul peak: {total_peak / 1e9:,.0f} GFLOP/s (the start-up "
                 "measurement was lower than this step's rate: other work on the cores?)")
        last_metrics = {
            "loss": float(sums["loss_sum"]) / weight,
            "accuracy": float(sums["correct"]) / weight,
            "learning_rate": float(step_metrics["learning_rate"]),
            "grad_norm": float(sums["grad_norm"]) / interval_steps,
            "steps_per_sec": interval_steps / elapsed,
            "tokens_per_sec": float(sums["weight"]) / elapsed,
            "mfu": flops.mfu(flops_per_step, interval_steps, elapsed, total_peak),
            "interval_seconds": elapsed,
        }
        log.write(step, last_metrics)
        report(progress_line(step, num_steps, last_metrics, time.perf_counter() - start_time))
        accumulated, interval_steps, interval_start = {}, 0, time.perf_counter()
      eval_metrics = None
      if step % config.train.eval_every_steps == 0 or last_step:
        eval_start = time.perf_counter()
        eval_metrics = evaluate(eval_step, state.params, evaluation, setup.mesh)
        if last_step or (config.train.bleu_every_steps and
                         step % config.train.bleu_every_steps == 0):
          eval_metrics["eval_bleu"] = bleu_metrics(setup, config, state.params, bleu_set,
                                                   tokenizer)["bleu"]
        validation_seconds = time.perf_counter() - eval_start
        interval_start += validation_seconds  # steps/s, tokens/s and MFU count training steps only
        log.write(step, {**eval_metrics, "validation_seconds": validation_seconds})
        report(f"step {step} validation: " +
               " ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
        last_metrics.update(eval_metrics)
      stop = preemption.agreed()  # every process, every step: they must stop at the same one
      if step % config.train.checkpoint_every_steps == 0 or last_step or stop:
        guards.check_finite_losses(pending_losses, manager.latest_step())
        guards.check_finite_parameters(state.params, step, manager.latest_step())
        ranked = eval_metrics if eval_metrics and config.train.best_metric in eval_metrics \
            else None  # e.g. no BLEU at this evaluation: not a candidate for "best"
        checkpointing.save(manager, step, state, train_iterator, metadata, metrics=ranked,
                           force=True)
      if stop:
        report(f"SIGTERM received: saved a checkpoint at step {step}, exiting")
        break
      if not last_step:
        batch = sharding.global_batch(next(train_iterator), setup.mesh)
    if step == num_steps and config.train.test_at_end:
      test_set = inputs.eval_set(builder, config, tokenizer, config.data.test_split,
                                 process_index, process_count)
      test = bleu_metrics(setup, config, state.params, test_set, tokenizer)
      report(f"{config.data.test_split} BLEU {test['bleu']:.2f} chrF {test['chrf']:.2f} "
             f"({inputs.global_size(test_set)} sentences, beam {config.decode.beam_size}, "
             f"alpha {config.decode.alpha})\nBLEU signature: {test['bleu_signature']}")
      last_metrics.update(test_bleu=test["bleu"], test_chrf=test["chrf"])
  finally:
    manager.wait_until_finished()
    preemption.restore()
    log.close()
  return last_metrics
