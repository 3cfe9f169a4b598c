"""tf.data pipelines: tokenize, filter, shuffle, pack and batch for training; sorted, padded
batches for evaluation.

Training batches are packed rows `[rows, length]`: several sentence pairs per row, with
`*_segmentation` (0 = padding, 1.. = pair within the row) and `*_position` (restarting at each
pair) for the model's masks and positional encoding.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from transformer.data.tokenizer import EOS_ID, TokenizerBase

FEATURES = ("inputs", "targets")
_TOKENIZE_BATCH = 256


def texts_for_tokenizer(dataset: tf.data.Dataset, max_sentences: int,
                        features: tuple[str, ...] = FEATURES) -> Iterator[str]:
  """The `features` sentences (source, target or both) of the first `max_sentences` pairs (the
  tokenizer's sample)."""
  for example in dataset.take(max_sentences).as_numpy_iterator():
    for feature in features:
      yield example[feature].decode("utf-8")


def side(feature: str) -> str:
  """The tokenizer side of a feature: inputs are the source, targets the target."""
  return "source" if feature == "inputs" else "target"


def tokenize(dataset: tf.data.Dataset, tokenizer: TokenizerBase) -> tf.data.Dataset:
  """Strings -> int32 token ids ending with EOS, batched through SentencePiece for speed."""

  def encode(batch):
    return {key: tokenizer.tf_encode_batch(value, side(key)) if key in FEATURES else value
            for key, value in batch.items()}

  return (dataset.batch(_TOKENIZE_BATCH)
          .map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .unbatch())


def within_length(example: dict[str, tf.Tensor], max_length: int) -> tf.Tensor:
  """True if both sides have at most `max_length` tokens."""
  return tf.logical_and(tf.size(example["inputs"]) <= max_length,
                        tf.size(example["targets"]) <= max_length)


def pack(dataset: tf.data.Dataset, length: int, bins: int = 16,
         inputs_length: int | None = None) -> tf.data.Dataset:
  """Packs pairs into rows of `length` tokens per side (first fit over `bins` open rows).

  `inputs_length` (default `length`) sets a different row length for the source side: sources
  are systematically shorter or longer than targets in most corpora, and matching the row
  lengths to that ratio keeps both sides full. A pair goes into the first open row where both
  of its sides still fit. When none has room, the fullest open row is emitted and a new row
  starts in its place. Pairs must be at most `length` long (filter first). The rows still open
  when a finite dataset ends are not emitted, which suits repeated training streams.
  """
  lengths = {"inputs": inputs_length or length, "targets": length}
  keys = [f"{feature}{suffix}" for feature in FEATURES
          for suffix in ("", "_segmentation", "_position")]

  def append(row, used, count, example):
    new_row = dict(row)
    for feature in FEATURES:
      tokens = tf.cast(example[feature], tf.int32)
      size = tf.size(tokens)
      place = lambda values: tf.pad(values, [[used[feature],
                                              lengths[feature] - used[feature] - size]])
      new_row[feature] += place(tokens)
      new_row[f"{feature}_segmentation"] += place(tf.fill([size], count + 1))
      new_row[f"{feature}_position"] += place(tf.range(size))
    return new_row

  def step(state, example):
    rows, used, count = state  # [bins, length] per key, [bins] per side, [bins]
    fits = tf.reduce_all(
        tf.stack([used[f] + tf.size(example[f]) <= lengths[f] for f in FEATURES]), axis=0)
    any_fits = tf.reduce_any(fits)
    fullness = used["inputs"] + used["targets"]
    chosen = tf.where(any_fits, tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32),
                      tf.argmax(fullness, output_type=tf.int32))
    emitted = {key: rows[key][chosen] for key in keys}
    keep = tf.cast(any_fits, tf.int32)  # 0: the chosen row was emitted and starts afresh
    start_used = {f: used[f][chosen] * keep for f in FEATURES}
    start_row = {key: rows[key][chosen] * keep for key in keys}
    new_row = append(start_row, start_used, count[chosen] * keep, example)
    index = [[chosen]]
    rows = {key: tf.tensor_scatter_nd_update(rows[key], index, [new_row[key]]) for key in keys}
    used = {f: tf.tensor_scatter_nd_update(used[f], index, [start_used[f] + tf.size(example[f])])
            for f in FEATURES}
    count = tf.tensor_scatter_nd_update(count, index, [count[chosen] * keep + 1])
    emit = tf.logical_and(tf.logical_not(any_fits), emitted["inputs_segmentation"][0] > 0)
    return (rows, used, count), (emit, emitted)

  initial = ({key: tf.zeros([bins, lengths[key.split("_")[0]]], tf.int32) for key in keys},
             {feature: tf.zeros([bins], tf.int32) for feature in FEATURES},
             tf.zeros([bins], tf.int32))
  return (dataset.scan(initial, step)
          .filter(lambda emit, row: emit)
          .map(lambda emit, row: row))


def training_dataset(dataset: tf.data.Dataset, tokenizer: TokenizerBase, *, max_length: int,
                     packed_length: int, batch_size: int, shuffle_buffer: int,
                     seed: int, packed_inputs_length: int = 0) -> tf.data.Dataset:
  """An endless, seeded stream of packed batches `[batch_size, packed_length]`.

  `packed_inputs_length` (0: same as `packed_length`) is the source rows' length.

  Order of operations: shuffle the text pairs (seeded, reshuffled every epoch), repeat,
  tokenize, drop pairs longer than `max_length`, pack, batch, prefetch.
  """
  if max_length > min(packed_length, packed_inputs_length or packed_length):
    raise ValueError(f"config.data.max_train_length ({max_length}) must not exceed "
                     f"config.data.packed_length ({packed_length}) or "
                     f"config.data.packed_inputs_length ({packed_inputs_length})")
  dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  dataset = tokenize(dataset, tokenizer).filter(lambda ex: within_length(ex, max_length))
  dataset = pack(dataset, packed_length, inputs_length=packed_inputs_length or None)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def bucket_length(length: int, max_length: int) -> int:
  """Padded length of an eval batch: the next power of two >= 8, at most `max_length`."""
  return int(min(max(8, 1 << (max(length, 1) - 1).bit_length()), max_length))


def _truncate(ids: np.ndarray, max_length: int) -> np.ndarray:
  """Keeps at most `max_length` tokens, the last one EOS."""
  if len(ids) <= max_length:
    return ids
  return np.append(ids[:max_length - 1], EOS_ID).astype(ids.dtype)


def evaluation_batches(dataset: tf.data.Dataset, tokenizer: TokenizerBase, *, batch_size: int,
                       max_length: int, num_batches: int | None = None
                       ) -> tuple[list[dict[str, np.ndarray]], list[str], list[str]]:
  """Every example of a (small) split, in length-sorted, padded batches; none is dropped.

  Sequences longer than `max_length` are truncated. Batches carry `index` (the example's position
  in the split, -1 for padding rows); `num_batches` pads the list with empty batches so that every
  process runs the same number of steps. Returns the batches and the source and reference texts
  in split order.
  """
  sources, references, encoded = [], [], {feature: [] for feature in FEATURES}
  for batch in dataset.batch(_TOKENIZE_BATCH).as_numpy_iterator():
    sources += [text.decode("utf-8") for text in batch["inputs"]]
    references += [text.decode("utf-8") for text in batch["targets"]]
    for feature in FEATURES:
      encoded[feature] += [np.asarray(ids, np.int32) for ids in
                           tokenizer.encode([text.decode("utf-8") for text in batch[feature]],
                                            side(feature))]
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
