"""From the experiment config to ready inputs: prepared dataset, tokenizer, train and eval data."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import grain
import tensorflow_datasets as tfds

from transformer.data import datasets, pipeline
from transformer.data import tokenizer as tokenizer_lib


@dataclasses.dataclass
class EvalSet:
  """A split ready for evaluation: padded batches plus the texts in split order."""

  batches: list[dict[str, np.ndarray]]
  sources: list[str]
  references: list[str]


def get_tokenizer(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict,
                  workdir: str) -> tokenizer_lib.TokenizerBase:
  """The workdir's SentencePiece model(s), trained on a capped train-split sample if absent."""
  train = datasets.load_split(builder, config.data, config.data.train_split)
  return tokenizer_lib.load_or_train(
      workdir,
      lambda features: pipeline.texts_for_tokenizer(train, config.tokenizer.sample_size, features),
      vocab_size=config.tokenizer.vocab_size, model_type=config.tokenizer.model_type,
      character_coverage=config.tokenizer.character_coverage,
      byte_fallback=config.tokenizer.byte_fallback,
      normalization=config.tokenizer.normalization,
      han_characters=config.tokenizer.han_characters,
      vocabularies=config.tokenizer.vocabularies)


def train_dataset(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict,
                  tokenizer: tokenizer_lib.TokenizerBase, process_index: int = 0,
                  process_count: int = 1, reseed_at_step: int = 0) -> grain.IterDataset:
  """This process's endless stream of packed training batches (`batch_size` is per process).

  Seeded by `config.seed` and the process; `reseed_at_step` > 0 gives the stream a run starts
  at that step when it cannot continue the saved one (see `TrainStream.resume`).
  """
  data = config.data
  if data.batch_size % process_count:
    raise ValueError(f"config.data.batch_size ({data.batch_size}) must be divisible by the "
                     f"number of processes ({process_count})")
  split = datasets.load_split(builder, data, data.train_split, process_index, process_count)
  return pipeline.training_dataset(
      split, tokenizer, max_length=data.max_train_length, packed_length=data.packed_length,
      batch_size=data.batch_size // process_count,
      seed=stream_seed(config.seed, process_index, reseed_at_step),
      packing_bins=data.packing_bins, workers=data.workers, read_threads=read_threads(data),
      packed_inputs_length=data.packed_inputs_length)


def read_threads(data: ml_collections.ConfigDict) -> int:
  """`config.data.read_threads`, where -1 (auto) is 16 for a `data_dir` in a bucket (each record
  read waits on the network) and 0 on a local disk (threads only add overhead there)."""
  if data.read_threads >= 0:
    return data.read_threads
  return 16 if "://" in data.data_dir else 0


def stream_seed(seed: int, process_index: int, reseed_at_step: int = 0) -> int:
  """The shuffle seed of a process's stream: `seed + process_index` from the start; mixed with
  the step for a stream started afresh mid-run."""
  if not reseed_at_step:
    return seed + process_index
  return int(np.random.SeedSequence([seed, process_index, reseed_at_step]).generate_state(1)[0])


class TrainStream:
  """This process's training batches and their position, which checkpoints save.

  The position is Grain's iterator state (a few hundred bytes of JSON) with the layout it holds
  for: the process count and the worker count, both of which shape the stream.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict,
               tokenizer: tokenizer_lib.TokenizerBase, process_index: int = 0,
               process_count: int = 1):
    self._make = functools.partial(train_dataset, builder, config, tokenizer, process_index,
                                   process_count)
    self.layout = {"process_count": process_count, "workers": config.data.workers}
    self.iterator = iter(self._make())

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self.iterator)

  def position(self) -> dict[str, Any]:
    """What a checkpoint saves for this process."""
    return {**self.layout, "grain": self.iterator.get_state()}

  def resume(self, saved: dict[str, Any] | None, step: int) -> str | None:
    """Continues from a saved position; returns None, or the one-line warning of a fresh
    stream seeded by `step` when the position is missing or was saved for another layout."""
    if saved is not None and all(saved.get(key) == value for key, value in self.layout.items()):
      self.iterator.set_state(saved["grain"])
      return None
    self.iterator = iter(self._make(reseed_at_step=step))
    if saved is None:
      why = "holds no input position for this process (or one of the tf.data pipeline)"
    else:
      why = (f"was written with {saved.get('process_count')} processes x "
             f"{saved.get('workers')} input workers, this run has "
             f"{self.layout['process_count']} x {self.layout['workers']}")
    return (f"warning: the checkpoint at step {step} {why}: training continues on a fresh "
            f"input stream seeded by step {step}, not where the saved one stopped")


def eval_set(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict,
             tokenizer: tokenizer_lib.TokenizerBase, split: str, process_index: int = 0,
             process_count: int = 1, max_examples: int | None = None) -> EvalSet:
  """This process's share of `split` in length-sorted batches, the same count on every process."""
  data = config.data
  subset, total = datasets.first_examples(builder, split, max_examples)
  dataset = datasets.load_split(builder, data, subset, process_index, process_count)
  per_process = -(-total // process_count)
  local_batch = data.eval_batch_size // process_count
  batches, sources, references = pipeline.evaluation_batches(
      dataset, tokenizer, batch_size=local_batch, max_length=data.max_eval_length,
      num_batches=-(-per_process // local_batch))
  if process_count > 1:
    batches = agree_widths(batches)
  return EvalSet(batches, sources, references)


def global_size(evaluation: EvalSet) -> int:
  """Sentences of the split over all processes (each process holds its share)."""
  if jax.process_count() == 1:
    return len(evaluation.sources)
  from jax.experimental import multihost_utils  # noqa: PLC0415  (multi-process runs only)
  return int(np.sum(multihost_utils.process_allgather(np.array(len(evaluation.sources)))))


def agree_widths(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
  """Pads each process's i-th batch to the widest i-th batch of any process.

  The processes' rows form one global array per batch, so its width must be the same on every
  process (a collective; every process calls it with the same number of batches).
  """
  from jax.experimental import multihost_utils  # noqa: PLC0415  (multi-process runs only)

  widths = np.array([[batch[f].shape[1] for f in pipeline.FEATURES] for batch in batches],
                    np.int32)
  agreed = np.max(multihost_utils.process_allgather(widths), axis=0)
  padded = []
  for batch, row in zip(batches, agreed):
    padded.append({**batch, **{f: np.pad(batch[f], ((0, 0), (0, int(w) - batch[f].shape[1])))
                               for f, w in zip(pipeline.FEATURES, row)}})
  return padded
