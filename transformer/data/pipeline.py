"""Grain pipelines: tokenize, filter, shuffle, pack and batch for training; sorted, padded
batches for evaluation. NumPy and Grain only (no TensorFlow).

Training batches are packed rows `[rows, length]`: several sentence pairs per row, with
`*_segmentation` (0 = padding, 1.. = pair within the row) and `*_position` (restarting at each
pair) for the model's masks and positional encoding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Sequence

import grain
import numpy as np
from absl import flags
from grain import experimental as grain_experimental

from transformer.data.tokenizer import EOS_ID, TokenizerBase

FEATURES = ("inputs", "targets")
TOKENIZE_BATCH = 256


def texts_for_tokenizer(pairs: Iterable[dict[str, str]], max_sentences: int,
                        features: tuple[str, ...] = FEATURES) -> Iterator[str]:
  """The `features` sentences (source, target or both) of the first `max_sentences` pairs (the
  tokenizer's sample)."""
  for count, pair in enumerate(pairs):
    if count == max_sentences:
      return
    for feature in features:
      yield pair[feature]


def side(feature: str) -> str:
  """The tokenizer side of a feature: inputs are the source, targets the target."""
  return "source" if feature == "inputs" else "target"


def encode_pairs(tokenizer: TokenizerBase, pairs: Sequence[dict[str, str]]
                 ) -> list[dict[str, np.ndarray]]:
  """Text pairs -> int32 token ids ending with EOS, one SentencePiece call per side."""
  encoded = {feature: tokenizer.encode([pair[feature] for pair in pairs], side(feature))
             for feature in FEATURES}
  return [{feature: np.asarray(encoded[feature][i], np.int32) for feature in FEATURES}
          for i in range(len(pairs))]


@dataclasses.dataclass(frozen=True)
class EncodePairs(grain.transforms.Map):
  """Grain step: a list of text pairs -> the list of their token ids (in a worker process)."""

  tokenizer: TokenizerBase

  def map(self, pairs: list[dict[str, str]]) -> list[dict[str, np.ndarray]]:
    return encode_pairs(self.tokenizer, pairs)


@dataclasses.dataclass(frozen=True)
class Unbatch(grain_experimental.FlatMapTransform):
  """Grain step: a list of examples -> its examples, one by one."""

  max_fan_out: int = TOKENIZE_BATCH

  def flat_map(self, examples: list[Any]) -> list[Any]:
    return examples


@dataclasses.dataclass(frozen=True)
class WithinLength(grain.transforms.Filter):
  """Grain step: keeps pairs whose sides both have at most `max_length` tokens."""

  max_length: int

  def filter(self, example: dict[str, np.ndarray]) -> bool:
    return all(len(example[feature]) <= self.max_length for feature in FEATURES)


def rename_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Grain's packed names (`*_segment_ids`, `*_positions`) -> the model's."""
  renamed = {}
  for feature in FEATURES:
    renamed[feature] = row[feature].astype(np.int32)
    renamed[f"{feature}_segmentation"] = row[f"{feature}_segment_ids"].astype(np.int32)
    renamed[f"{feature}_position"] = row[f"{feature}_positions"].astype(np.int32)
  return renamed


def pack(examples: grain.IterDataset, length: int, bins: int,
         inputs_length: int | None = None) -> grain.IterDataset:
  """Packs pairs into rows of `length` tokens per side: Grain's first fit over `bins` rows.

  `inputs_length` (default `length`) sets a different row length for the source side: sources
  are systematically shorter or longer than targets in most corpora, and matching the row
  lengths to that ratio keeps both sides full. A pair goes into the first row where both of its
  sides still fit; when none has room, all `bins` rows are emitted and packing starts afresh.
  Pairs must be at most `length` long (filter first).
  """
  lengths = {"inputs": inputs_length or length, "targets": length}
  packed = grain_experimental.FirstFitPackIterDataset(
      examples, length_struct=lengths, num_packing_bins=bins, shuffle_bins=False)
  return packed.map(rename_packed)


def packed_rows(pairs: grain.IterDataset, tokenizer: TokenizerBase, *, max_length: int,
                packed_length: int, packing_bins: int, packed_inputs_length: int = 0
                ) -> grain.IterDataset:
  """Text pairs -> packed rows: tokenized in groups of `TOKENIZE_BATCH`, pairs longer than
  `max_length` dropped, then packed (`packed_inputs_length`, 0 = `packed_length`, is the source
  rows' length)."""
  tokens = pairs.batch(TOKENIZE_BATCH, batch_fn=list).map(EncodePairs(tokenizer))
  tokens = grain_experimental.FlatMapIterDataset(tokens, Unbatch())
  kept = tokens.filter(WithinLength(max_length))
  return pack(kept, packed_length, packing_bins, inputs_length=packed_inputs_length or None)


def read_options(threads: int) -> grain.ReadOptions:
  """How a split's records are read: `threads` > 0 reads them ahead in as many threads (for a
  bucket, where each read waits on the network); 0 in the iterating thread. Grain's default (16
  threads, 500 records ahead) costs a scan of the 500 pending reads per record: 31 ms per batch
  of the tiny test config against 8 ms with none (one process, 200 batches)."""
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads)


def training_dataset(pairs: Sequence[dict[str, str]], tokenizer: TokenizerBase, *,
                     max_length: int, packed_length: int, batch_size: int, seed: int,
                     packing_bins: int, workers: int = 0, read_threads: int = 0,
                     packed_inputs_length: int = 0) -> grain.IterDataset:
  """An endless, seeded stream of packed batches `[batch_size, packed_length]`.

  `packed_inputs_length` (0: same as `packed_length`) is the source rows' length.

  Order of operations: shuffle the text pairs (seeded, reshuffled every epoch), repeat,
  tokenize in groups of `TOKENIZE_BATCH`, drop pairs longer than `max_length`, pack, batch.
  With `workers` > 0 that runs in as many processes, each on its slice of the shuffled stream
  (the batches then depend on the worker count, which checkpoints record). `read_threads`: see
  `read_options` (the batches do not depend on it).
  """
  if max_length > min(packed_length, packed_inputs_length or packed_length):
    raise ValueError(f"config.data.max_train_length ({max_length}) must not exceed "
                     f"config.data.packed_length ({packed_length}) or "
                     f"config.data.packed_inputs_length ({packed_inputs_length})")
  if len(pairs) == 0:
    raise ValueError("the training split is empty: nothing to train on")
  stream = (grain.MapDataset.source(pairs).shuffle(seed=seed).repeat()
            .to_iter_dataset(read_options(read_threads)))
  stream = packed_rows(stream, tokenizer, max_length=max_length, packed_length=packed_length,
                       packing_bins=packing_bins, packed_inputs_length=packed_inputs_length)
  stream = stream.batch(batch_size, drop_remainder=True)
  if workers:
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (defaults will do)
      flags.FLAGS.mark_as_parsed()
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return stream


def bucket_length(length: int, max_length: int) -> int:
  """Padded length of an eval batch: the next power of two >= 8, at most `max_length`."""
  return int(min(max(8, 1 << (max(length, 1) - 1).bit_length()), max_length))


def _truncate(ids: np.ndarray, max_length: int) -> np.ndarray:
  """Keeps at most `max_length` tokens, the last one EOS."""
  if len(ids) <= max_length:
    return ids
  return np.append(ids[:max_length - 1], EOS_ID).astype(ids.dtype)


def evaluation_batches(pairs: Iterable[dict[str, str]], tokenizer: TokenizerBase, *,
                       batch_size: int, max_length: int, num_batches: int | None = None
                       ) -> tuple[list[dict[str, np.ndarray]], list[str], list[str]]:
  """Every example of a (small) split, in length-sorted, padded batches; none is dropped.

  Sequences longer than `max_length` are truncated. Batches carry `index` (the example's position
  in the split, -1 for padding rows); `num_batches` pads the list with empty batches so that every
  process runs the same number of steps. Returns the batches and the source and reference texts
  in split order.
  """
  pairs = list(pairs)
  sources = [pair["inputs"] for pair in pairs]
  references = [pair["targets"] for pair in pairs]
  encoded = {feature: [] for feature in FEATURES}
  for start in range(0, len(pairs), TOKENIZE_BATCH):
    for example in encode_pairs(tokenizer, pairs[start:start + TOKENIZE_BATCH]):
      for feature in FEATURES:
        encoded[feature].append(example[feature])
  order = sorted(range(len(sources)),
                 key=lambda i: (len(encoded["inputs"][i]), len(encoded["targets"][i])))
  batches = []
  for start in range(0, len(order), batch_size):
    chosen = order[start:start + batch_size]
    batch = {"index": np.full([batch_size], -1, np.int32)}
    batch["index"][:len(chosen)] = chosen
    for feature in FEATURES:
      rows = [_truncate(encoded[feature][i], max_length) for i in chosen]
      width = bucket_length(max(len(r) for r in rows), max_length)
      batch[feature] = np.zeros([batch_size, width], np.int32)
      for row, ids in zip(batch[feature], rows):
        row[:len(ids)] = ids
    batches.append(batch)
  while num_batches is not None and len(batches) < num_batches:
    batches.append({"index": np.full([batch_size], -1, np.int32),
                    **{f: np.zeros([batch_size, 8], np.int32) for f in FEATURES}})
  return batches, sources, references
