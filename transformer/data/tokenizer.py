"""SentencePiece subwords: trained on the training split only, stored in the workdir, reused.

Ids: 0 padding (also the decoder's start symbol), 1 end of sentence, 2 unknown.
"""

from __future__ import annotations

import io
import itertools
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm
import tensorflow as tf

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
MODEL_FILE = "sentencepiece.model"


class Tokenizer:
  """Text <-> token ids with a trained SentencePiece model."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    """Reads a `.model` file (local or gs://)."""
    with tf.io.gfile.GFile(path, "rb") as handle:
      return cls(handle.read())

  def save(self, path: str) -> None:
    """Writes the model file atomically (temporary file, then rename)."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "wb") as handle:
      handle.write(self.model_proto)
    tf.io.gfile.rename(temporary, path, overwrite=True)

  @property
  def vocab_size(self) -> int:
    """Number of ids, special ones included."""
    return self.processor.get_piece_size()

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, each ending with EOS."""
    return [ids + [EOS_ID] for ids in self.processor.encode(list(texts))]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids up to the first EOS, padding skipped."""
    kept = []
    for token in ids:
      token = int(token)
      if token == EOS_ID:
        break
      if token != PAD_ID:
        kept.append(token)
    return self.processor.decode(kept)

  def pieces(self, ids: Iterable[int]) -> list[str]:
    """The subword strings of the ids (for attention maps)."""
    return [self.processor.id_to_piece(int(token)) for token in ids]

  def tf_encode_batch(self, texts: tf.Tensor) -> tf.RaggedTensor:
    """A tf.data-friendly batched encode: `[N]` strings -> ragged `[N, None]` int32 ids."""

    def encode_numpy(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      encoded = self.encode([text.decode("utf-8") for text in batch])
      lengths = np.array([len(ids) for ids in encoded], np.int64)
      values = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum()))
      return values, lengths

    values, lengths = tf.numpy_function(encode_numpy, [texts], (tf.int32, tf.int64),
                                        stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(values, lengths)


def train(texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
          character_coverage: float = 1.0, byte_fallback: bool = False,
          normalization: str = "nmt_nfkc") -> Tokenizer:
  """Trains a SentencePiece model on `texts` (the caller caps the sample).

  `normalization` is SentencePiece's rule: `nmt_nfkc` (default; folds e.g. full-width
  punctuation to ASCII) or `identity` (exact round trips, e.g. for Chinese references).
  """
  if model_type not in ("unigram", "bpe"):
    raise ValueError(f"config.tokenizer.model_type must be one of unigram, bpe; got "
                     f"{model_type!r}")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage,
      byte_fallback=byte_fallback, normalization_rule_name=normalization, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2)
  return Tokenizer(model.getvalue())


def load_or_train(workdir: str, texts: Iterable[str], vocab_size: int, model_type: str,
                  character_coverage: float, byte_fallback: bool = False,
                  normalization: str = "nmt_nfkc") -> Tokenizer:
  """The workdir's tokenizer if there is one, else a new one trained on `texts` and saved there."""
  path = os.path.join(workdir, MODEL_FILE)
  if tf.io.gfile.exists(path):
    return Tokenizer.load(path)
  tokenizer = train(texts, vocab_size, model_type, character_coverage, byte_fallback,
                    normalization)
  tf.io.gfile.makedirs(workdir)
  tokenizer.save(path)
  return tokenizer
