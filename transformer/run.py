"""The training loop: owns I/O, logging, evaluation, checkpoints and preemption.

`train_and_evaluate(config, workdir)` resumes from the workdir's latest checkpoint if there is
one. The steps themselves are pure functions in `training.py`, jitted by `steps.py`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import tensorboardX
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from transformer import (checkpointing, compilation_cache, evaluation, flops, guards, inference,
                         provenance, sharding, training)
from transformer import workdir as workdir_lib
from transformer.data import datasets, inputs
from transformer.data.tokenizer import TokenizerBase
from transformer.steps import (Setup, compiled_eval_step, compiled_train_step,
                               dropout_prng_impl, initial_state, make_setup, model_flops_per_step,
                               prng_impl, schedule_fields)

class MetricsLog:
  """JSONL file plus TensorBoard summaries (tensorboardX; written by process 0 only)."""

  def __init__(self, workdir: str):
    self.is_writer = jax.process_index() == 0
    self.writer = tensorboardX.SummaryWriter(workdir) if self.is_writer else None
    self.path = workdir_lib.metrics(workdir)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Appends one record and writes the scalars."""
    if self.writer is None:
      return
    for name, value in metrics.items():
      self.writer.add_scalar(name, value, step)
    workdir_lib.append_line(self.path, json.dumps({"step": step, **metrics}))

  def close(self) -> None:
    """Flushes the summaries."""
    if self.writer is not None:
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
  workdir_lib.write_atomically(workdir_lib.provenance(workdir), json.dumps(
      {**metadata["provenance"], "config": metadata["config"]}, indent=1))


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
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  compilation_cache.enable(config, workdir)
  builder, tokenizer = prepare_inputs(config, workdir)
  setup = make_setup(config, tokenizer.vocab_size)
  process_index, process_count = jax.process_index(), jax.process_count()
  stream = inputs.TrainStream(builder, config, tokenizer, process_index, process_count)
  evaluation = inputs.eval_set(builder, config, tokenizer, config.data.eval_split, process_index,
                               process_count, max_examples=config.train.eval_max_examples)
  bleu_set = inputs.eval_set(builder, config, tokenizer, config.data.eval_split, process_index,
                             process_count, max_examples=config.train.bleu_max_examples)
  manager = checkpointing.make_manager(
      workdir_lib.checkpoints(workdir), keep=config.train.keep_checkpoints,
      save_every=config.train.checkpoint_every_steps, best_metric=config.train.best_metric,
      best_mode=config.train.best_mode)
  metadata = checkpoint_metadata(config, tokenizer)
  write_provenance(workdir, metadata)
  latest = manager.latest_step()
  if latest is not None:
    state, saved = checkpointing.restore(manager, latest, setup.abstract_state)
    conflict = training.cooldown_conflict(schedule_fields(saved["config"]["train"]),
                                          schedule_fields(config.train), latest)
    if conflict:
      raise ValueError(f"{workdir}: {conflict}")
    if not guards.all_finite(state.params):
      raise FloatingPointError(f"the checkpoint at step {latest} in {workdir}/checkpoints holds "
                               "NaN or infinite parameters; delete that step's directory to "
                               "resume from an earlier one")
    report(f"resumed from the checkpoint at step {latest}")
    warning = stream.resume(checkpointing.restore_position(manager, latest), latest)
    if warning:
      report(warning)
  else:
    state = initial_state(setup)

  drawn = dropout_prng_impl(config, setup.mesh)
  if drawn != prng_impl(config):
    report(f"dropout masks drawn with {drawn}, not config.train.prng_impl="
           f"{prng_impl(config)}: XLA would draw rbg's bits for the whole batch on each of "
           f"the {setup.mesh.size} devices")
  train_step = compiled_train_step(setup, config)
  eval_step = compiled_eval_step(setup, config)
  first_batch = sharding.global_batch(next(stream), setup.mesh)
  hits_before = compilation_cache.hits()
  compiled = train_step.lower(state, first_batch).compile()
  if compilation_cache.hits() > hits_before:
    report("loaded the compiled train step from the persistent compilation cache "
           f"({compilation_cache.cache_dir(config, workdir)})")
  flops_per_step = model_flops_per_step(setup, config)
  total_peak = flops.peak_flops(config.train.peak_flops, setup.mesh.size)
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
        peak = flops.corrected_peak(total_peak, achieved, config.train.peak_flops)
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
        checkpointing.save(manager, step, state, stream.position(), metadata, metrics=ranked,
                           force=True)
      if stop:
        report("stop signal (SIGTERM or SIGUSR1) received: saved a checkpoint at step "
               f"{step}, exiting")
        break
      if not last_step:
        batch = sharding.global_batch(next(stream), setup.mesh)
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
