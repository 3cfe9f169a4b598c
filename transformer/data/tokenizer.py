"""SentencePiece subwords: trained on the training split only, stored in the workdir, reused.

Ids: 0 padding (also the decoder's start symbol), 1 end of sentence, 2 unknown.
One joint vocabulary for both languages (the paper's), or separate source and target
vocabularies in one id space (`SplitTokenizer`, `config.tokenizer.vocabularies=separate`).
"""

from __future__ import annotations

import collections
import io
import os
from typing import Callable, Iterable, Sequence

import sentencepiece as spm
from etils import epath

from transformer import workdir as workdir_lib
from transformer.special_ids import EOS_ID, PAD_ID, UNK_ID, until_eos  # noqa: F401  (re-exported)

NUM_SPECIAL = 3
MODEL_FILE = "sentencepiece.model"
SIDES = ("source", "target")
VOCABULARIES = ("joint", "separate")
_SPLIT_MAGIC = b"transformer:separate-vocabularies:"


class TokenizerBase:
  """What the pipeline, decoding and checkpoints use: `encode(texts, side)`, `decode(ids)`,
  `pieces(ids, side)`, `vocab_size`, `model_proto`, and saving. Tokenizers pickle (by their
  model bytes), so the input pipeline's worker processes can encode."""

  model_proto: bytes

  def encode(self, texts: Sequence[str], side: str = "target") -> list[list[int]]:
    """Token ids of each text, each ending with EOS."""
    raise NotImplementedError

  def save(self, path: str) -> None:
    """Writes the model file atomically (temporary file, then rename)."""
    workdir_lib.write_atomically(path, self.model_proto)


class Tokenizer(TokenizerBase):
  """Text <-> token ids with one SentencePiece model (both sides share it)."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)

  def __getstate__(self) -> bytes:
    return self.model_proto

  def __setstate__(self, model_proto: bytes) -> None:
    self.__init__(model_proto)

  @property
  def vocab_size(self) -> int:
    """Number of ids, special ones included."""
    return self.processor.get_piece_size()

  def encode(self, texts: Sequence[str], side: str = "target") -> list[list[int]]:
    """Token ids of each text, each ending with EOS (`side` matters to `SplitTokenizer` only)."""
    return [ids + [EOS_ID] for ids in self.processor.encode(list(texts))]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids up to the first EOS, padding skipped."""
    return self.processor.decode(until_eos(ids))

  def pieces(self, ids: Iterable[int], side: str = "target") -> list[str]:
    """The subword strings of the ids (for attention maps)."""
    return [self.processor.id_to_piece(int(token)) for token in ids]


class SplitTokenizer(TokenizerBase):
  """Separate source and target SentencePiece models in one id space: the special ids are
  shared, source pieces keep their ids, target pieces follow them (shifted by the source size
  less the specials). The model's embedding rows of the two languages are then disjoint."""

  def __init__(self, source: Tokenizer, target: Tokenizer):
    self.source, self.target = source, target
    self.offset = source.vocab_size - NUM_SPECIAL

  @property
  def model_proto(self) -> bytes:
    """Both models in one blob (what checkpoints and the workdir's model file hold)."""
    source = self.source.model_proto
    return _SPLIT_MAGIC + len(source).to_bytes(8, "big") + source + self.target.model_proto

  @property
  def vocab_size(self) -> int:
    """Number of ids: both vocabularies, the special ids once."""
    return self.offset + self.target.vocab_size

  def encode(self, texts: Sequence[str], side: str = "target") -> list[list[int]]:
    """Token ids of each text of `side` (source or target), each ending with EOS."""
    if side == "source":
      return self.source.encode(texts)
    return [[self._shift(token) for token in ids] for ids in self.target.encode(texts)]

  def decode(self, ids: Iterable[int]) -> str:
    """Target text of the ids up to the first EOS (a source-side id reads as unknown)."""
    return self.target.decode(self._unshift(int(token)) for token in ids)

  def pieces(self, ids: Iterable[int], side: str = "target") -> list[str]:
    """The subword strings of the ids of `side` (for attention maps)."""
    if side == "source":
      return self.source.pieces(ids)
    return self.target.pieces(self._unshift(int(token)) for token in ids)

  def _shift(self, token: int) -> int:
    return token if token < NUM_SPECIAL else token + self.offset

  def _unshift(self, token: int) -> int:
    if token < NUM_SPECIAL:
      return token
    return token - self.offset if token >= self.source.vocab_size else UNK_ID


def from_bytes(blob: bytes) -> TokenizerBase:
  """The tokenizer a model file or checkpoint holds (joint, or split into source and target)."""
  if not blob.startswith(_SPLIT_MAGIC):
    return Tokenizer(blob)
  start = len(_SPLIT_MAGIC) + 8
  length = int.from_bytes(blob[len(_SPLIT_MAGIC):start], "big")
  return SplitTokenizer(Tokenizer(blob[start:start + length]), Tokenizer(blob[start + length:]))


def load(path: str) -> TokenizerBase:
  """Reads a model file (local or gs://)."""
  return from_bytes(epath.Path(path).read_bytes())


HAN_MODES = ("merge", "single")


def is_han(character: str) -> bool:
  """CJK unified ideographs (with extension A and the compatibility block)."""
  return ("\u4e00" <= character <= "\u9fff" or "\u3400" <= character <= "\u4dbf"
          or "\uf900" <= character <= "\ufaff")


def frequent_han_characters(texts: Sequence[str], limit: int) -> list[str]:
  """The Han characters in `texts`, most frequent first, at most `limit`."""
  counts = collections.Counter(c for text in texts for c in text if is_han(c))
  return [c for c, _ in counts.most_common(limit)]


def train(texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
          character_coverage: float = 1.0, byte_fallback: bool = False,
          normalization: str = "nmt_nfkc", han_characters: str = "merge") -> Tokenizer:
  """Trains a SentencePiece model on `texts` (the caller caps the sample).

  `normalization` is SentencePiece's rule: `nmt_nfkc` (default; folds e.g. full-width
  punctuation to ASCII) or `identity` (exact round trips, e.g. for Chinese references).
  `han_characters`: `merge` lets SentencePiece learn multi-character Chinese pieces (as for any
  script without spaces, e.g. `▁我不知道他`); `single` makes every Han character of the sample
  its own piece (SentencePiece's user-defined symbols are never merged), i.e. character-level
  Chinese beside subword English; at most half the vocabulary, the most frequent first.
  """
  if model_type not in ("unigram", "bpe"):
    raise ValueError(f"config.tokenizer.model_type must be one of unigram, bpe; got "
                     f"{model_type!r}")
  if han_characters not in HAN_MODES:
    raise ValueError(f"config.tokenizer.han_characters must be one of {', '.join(HAN_MODES)}; "
                     f"got {han_characters!r}")
  if han_characters == "single" and character_coverage < 1.0:
    # The Han characters are pieces of their own: a coverage below 1 would trim the rarest of
    # the other characters instead (Tatoeba lost Q, U, X, Z and four digits at 0.9995).
    raise ValueError("config.tokenizer.character_coverage must be 1.0 with han_characters="
                     f"single (got {character_coverage}): the Han characters are pieces of their "
                     "own, and a lower coverage drops rare Latin letters and digits instead")
  texts = list(texts)
  symbols = (frequent_han_characters(texts, vocab_size // 2) if han_characters == "single"
             else [])
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      user_defined_symbols=symbols,
      model_type=model_type, character_coverage=character_coverage,
      byte_fallback=byte_fallback, normalization_rule_name=normalization, pad_id=PAD_ID,
      eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2)
  return Tokenizer(model.getvalue())


def train_split(source_texts: Iterable[str], target_texts: Iterable[str], vocab_size: int,
                **options) -> SplitTokenizer:
  """Separate source and target models, ~`vocab_size` ids together (half each); `options` as
  for `train`, applied to both."""
  source_size = (vocab_size + NUM_SPECIAL) // 2
  return SplitTokenizer(train(source_texts, source_size, **options),
                        train(target_texts, vocab_size + NUM_SPECIAL - source_size, **options))


def load_or_train(workdir: str, texts: Callable[[tuple[str, ...]], Iterable[str]],
                  vocab_size: int, model_type: str, character_coverage: float,
                  byte_fallback: bool = False, normalization: str = "nmt_nfkc",
                  han_characters: str = "merge", vocabularies: str = "joint"
                  ) -> TokenizerBase:
  """The workdir's tokenizer if there is one, else a new one trained and saved there.

  `texts(features)` gives the sample's sentences of those features ("inputs", "targets").
  """
  path = os.path.join(workdir, MODEL_FILE)
  if epath.Path(path).exists():
    return load(path)
  if vocabularies not in VOCABULARIES:
    raise ValueError(f"config.tokenizer.vocabularies must be one of {', '.join(VOCABULARIES)}; "
                     f"got {vocabularies!r}")
  options = dict(model_type=model_type, character_coverage=character_coverage,
                 byte_fallback=byte_fallback, normalization=normalization,
                 han_characters=han_characters)
  if vocabularies == "separate":
    tokenizer = train_split(texts(("inputs",)), texts(("targets",)), vocab_size, **options)
  else:
    tokenizer = train(texts(("inputs", "targets")), vocab_size, **options)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  tokenizer.save(path)
  return tokenizer
