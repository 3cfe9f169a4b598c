"""SentencePiece: round trips, Chinese, special ids, reuse from the workdir."""

import itertools

import pytest

from transformer.data import number_words
from transformer.data import tokenizer as tokenizer_lib

from test_data_sources import SHARED_DATA


def number_texts(count=3000):
  return itertools.chain.from_iterable(
      (number_words.english(n), number_words.german(n)) for n in range(0, 300 * count, 300))


def test_round_trip_and_special_ids():
  tokenizer = tokenizer_lib.train(number_texts(), vocab_size=100)
  texts = ["three hundred forty-two", "dreihundertzweiundvierzig", "null"]
  encoded = tokenizer.encode(texts)
  assert all(ids[-1] == tokenizer_lib.EOS_ID and tokenizer_lib.PAD_ID not in ids
             for ids in encoded)
  assert [tokenizer.decode(ids + [0, 0]) for ids in encoded] == texts
  assert tokenizer.decode([5, tokenizer_lib.EOS_ID, 7]) == tokenizer.decode([5])


def test_chinese_without_spaces_tokenizes_and_round_trips():
  with open(SHARED_DATA / "tatoeba_cmn_eng" / "tatoeba.zh", encoding="utf-8") as handle:
    sentences = [line.strip() for line in itertools.islice(handle, 0, 29000, 10)]
  tokenizer = tokenizer_lib.train(sentences, vocab_size=3000, character_coverage=0.9995,
                                  normalization="identity")
  encoded = tokenizer.encode(sentences[:300])
  unknown = sum(ids.count(tokenizer_lib.UNK_ID) for ids in encoded)
  total = sum(len(ids) for ids in encoded)
  assert unknown / total < 0.01
  assert sum(len(ids) - 1 for ids in encoded) < sum(len(s) for s in sentences[:300])  # merges
  assert [tokenizer.decode(ids) for ids in encoded] == sentences[:300]


def test_trained_once_then_reused(tmp_path):
  first = tokenizer_lib.load_or_train(str(tmp_path), lambda _: number_texts(), 100, "bpe", 1.0)
  again = tokenizer_lib.load_or_train(str(tmp_path), lambda _: iter(["unused"]), 100, "bpe", 1.0)
  assert again.model_proto == first.model_proto
  assert not list(tmp_path.glob("*.tmp-*"))


def test_bad_model_type():
  with pytest.raises(ValueError, match="config.tokenizer.model_type must be one of unigram, bpe"):
    tokenizer_lib.train(["a"], 10, model_type="wordpiece")


def test_single_han_characters_are_their_own_pieces_beside_english_subwords():
  with open(SHARED_DATA / "tatoeba_cmn_eng" / "tatoeba.zh", encoding="utf-8") as handle:
    chinese = [line.strip() for line in itertools.islice(handle, 0, 29000, 10)]
  with open(SHARED_DATA / "tatoeba_cmn_eng" / "tatoeba.en", encoding="utf-8") as handle:
    english = [line.strip() for line in itertools.islice(handle, 0, 29000, 10)]
  kwargs = dict(vocab_size=4000, character_coverage=1.0, normalization="identity")
  merged = tokenizer_lib.train(chinese + english, **kwargs)
  single = tokenizer_lib.train(chinese + english, han_characters="single", **kwargs)

  def han_pieces(tokenizer):
    pieces = [p.lstrip("▁") for ids in tokenizer.encode(chinese[:300])
              for p in tokenizer.pieces(ids)]
    return [p for p in pieces if any(tokenizer_lib.is_han(c) for c in p)]

  assert max(len(p) for p in han_pieces(merged)) > 1  # SentencePiece's own Chinese phrases
  assert {len(p) for p in han_pieces(single)} == {1}  # one piece per character
  words = [w for ids in single.encode(english[:300]) for w in single.pieces(ids)]
  assert any(len(w) > 3 for w in words)  # English keeps multi-character subwords
  assert [single.decode(ids) for ids in single.encode(chinese[:300])] == chinese[:300]
  assert not any(tokenizer_lib.UNK_ID in ids for ids in single.encode(chinese + english))
  with pytest.raises(ValueError, match="character_coverage must be 1.0 with han_characters"):
    tokenizer_lib.train(english, vocab_size=100, han_characters="single",
                        character_coverage=0.9995)
  with pytest.raises(ValueError, match="han_characters must be one of merge, single"):
    tokenizer_lib.train(english, vocab_size=100, han_characters="chars")


def test_separate_vocabularies_share_one_id_space_without_overlap(tmp_path):
  english = [number_words.english(n) for n in range(0, 900_000, 300)]
  german = [number_words.german(n) for n in range(0, 900_000, 300)]
  texts = {("inputs",): english, ("targets",): german}
  split = tokenizer_lib.load_or_train(str(tmp_path), lambda features: iter(texts[features]),
                                      120, "unigram", 1.0, vocabularies="separate")
  source_size = split.source.vocab_size
  assert split.vocab_size == source_size + split.target.vocab_size - 3 <= 120
  source_ids = split.encode(english[:200], "source")
  target_ids = split.encode(german[:200], "target")
  special = {tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID, tokenizer_lib.UNK_ID}
  used_source = {t for ids in source_ids for t in ids} - special
  used_target = {t for ids in target_ids for t in ids} - special
  assert max(used_source) < source_size <= min(used_target)
  assert max(used_target) < split.vocab_size
  assert all(ids[-1] == tokenizer_lib.EOS_ID for ids in source_ids + target_ids)
  assert [split.decode(ids) for ids in target_ids] == german[:200]
  # Each side's ids are its own SentencePiece model's, shifted on the target side.
  assert source_ids == split.source.encode(english[:200])
  assert [[t if t < 3 else t - source_size + 3 for t in ids] for ids in target_ids] == \
      split.target.encode(german[:200])
  assert split.pieces(target_ids[5], "target") == split.target.pieces(
      split.target.encode([german[5]])[0])
  assert split.decode([min(used_source), tokenizer_lib.EOS_ID]) == \
      split.target.decode([tokenizer_lib.UNK_ID])  # a source id in the output reads as unknown
  again = tokenizer_lib.load(str(tmp_path / tokenizer_lib.MODEL_FILE))
  assert isinstance(again, tokenizer_lib.SplitTokenizer)
  assert again.encode(german[:20], "target") == target_ids[:20]
  assert tokenizer_lib.from_bytes(split.source.model_proto).model_proto == \
      split.source.model_proto  # a joint model file reads as before
  with pytest.raises(ValueError, match="vocabularies must be one of joint, separate"):
    tokenizer_lib.load_or_train(str(tmp_path / "x"), lambda _: iter(english), 50, "unigram",
                                1.0, vocabularies="per-language")
