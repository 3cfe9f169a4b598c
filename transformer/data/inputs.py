"""From the experiment config to ready inputs: prepared dataset, tokenizer, train and eval data."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
import tensorflow as tf
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
                  process_count: int = 1) -> tf.data.Dataset:
  """This process's endless stream of packed training batches (`batch_size` is per process)."""
  data = config.data
  if data.batch_size % process_count:
    raise ValueError(f"config.data.batch_size ({data.batch_size}) must be divisible by the "
                     f"number of processes ({process_count})")
  split = datasets.load_split(builder, data, data.train_split, process_index, process_count)
  return pipeline.training_dataset(
      split, tokenizer, max_length=data.max_train_length, packed_length=data.packed_length,
      batch_size=data.batch_size // process_count, shuffle_buffer=data.shuffle_buffer,
      seed=config.seed + process_index, packed_inputs_length=data.packed_inputs_length)


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
