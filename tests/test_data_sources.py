"""Datasets as tfds: the generated task, local parallel text, the catalog; bad input."""

import os
import pathlib
import threading

import ml_collections
import pytest
import tensorflow_datasets as tfds

from experiments.configs import common
from transformer.data import datasets, number_words, pipeline
from transformer.data.corpus import DataError

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
  data = common.base_config().data
  data.data_dir = str(tmp_path / "tfds")
  data.generated.update(dict(train_size=200, validation_size=20, test_size=20))
  data.update(overrides)
  return data


def write_corpus(directory, files: dict[str, str | bytes]) -> str:
  os.makedirs(directory, exist_ok=True)
  for name, content in files.items():
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(os.path.join(directory, name), mode) as handle:
      handle.write(content)
  return str(directory)


def read_all(builder, data, split):
  return [(pair["inputs"], pair["targets"]) for pair in datasets.load_split(builder, data, split)]


@pytest.mark.parametrize("n, en, de", [
    (0, "zero", "null"), (1, "one", "eins"), (16, "sixteen", "sechzehn"),
    (17, "seventeen", "siebzehn"), (21, "twenty-one", "einundzwanzig"),
    (30, "thirty", "dreißig"), (101, "one hundred one", "einhunderteins"),
    (342, "three hundred forty-two", "dreihundertzweiundvierzig"),
    (1001, "one thousand one", "eintausendeins"),
    (101000, "one hundred one thousand", "einhunderteintausend"),
    (342001, "three hundred forty-two thousand one", "dreihundertzweiundvierzigtausendeins"),
])
def test_number_words(n, en, de):
  assert number_words.english(n) == en
  assert number_words.german(n) == de


def test_generated_splits_are_seeded_and_disjoint():
  sizes = {"train": 500, "validation": 50, "test": 50}
  first, again = number_words.sample_numbers(3, sizes), number_words.sample_numbers(3, sizes)
  assert first == again
  assert first != number_words.sample_numbers(4, sizes)
  assert {k: len(v) for k, v in first.items()} == sizes
  assert len(set().union(*first.values())) == 600


def test_generated_builder(tmp_path):
  data = data_config(tmp_path)
  builder = datasets.prepare(data)
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "train": 200, "validation": 20, "test": 20}
  assert datasets.prepared_summary(builder) == (
      f"number_words/seed0-200-20-20/2.0.0 prepared as array_record in {builder.data_dir}: "
      "test 20, train 200, validation 20")
  lookup = {number_words.english(n): n for n in range(0, 10**6)}
  train_numbers = set()
  for source, target in read_all(builder, data, "train"):
    train_numbers |= {lookup[part] for part in source.split(", ")}
  for source, target in read_all(builder, data, "test"):
    numbers = tuple(lookup[part] for part in source.split(", "))
    assert 1 <= len(numbers) <= 3 and not set(numbers) & train_numbers
    assert (source, target) == number_words.sentence_pair(numbers)


def test_concurrent_preparations_take_turns(tmp_path):
  # Two processes preparing one dataset on a fresh machine raced for tfds' final rename (the
  # loser crashed with FileExistsError). The second now waits, then reuses the first's data.
  data = data_config(tmp_path)
  results = {}
  waiting = threading.Thread(target=lambda: results.update(builder=datasets.prepare(data)))
  with datasets.preparation_lock(str(datasets.make_builder(data).data_dir)):
    waiting.start()
    waiting.join(timeout=2.0)
    assert waiting.is_alive()  # blocked on the lock, not preparing beside us
    datasets.make_builder(data).download_and_prepare(  # the "other process"
        file_format=datasets.FILE_FORMAT)
  waiting.join()
  splits = results["builder"].info.splits
  assert {s: splits[s].num_examples for s in splits} == {"train": 200, "validation": 20,
                                                          "test": 20}


def test_parallel_text_builder_from_line_aligned_files(tmp_path):
  corpus_dir = write_corpus(tmp_path / "corpus", {
      "train.en": "a cat\n\nthe dog\n" + "x" * 3000 + "\n",
      "train.de": "eine Katze\nleer\nder Hund\nlang\n",
      "val.en": "hello\n", "val.de": "hallo\n"})
  data = data_config(tmp_path, dataset="parallel_text", source_dir=corpus_dir)
  builder = datasets.prepare(data)
  assert read_all(builder, data, "train") == [("a cat", "eine Katze"), ("the dog", "der Hund")]
  assert read_all(builder, data, "val") == [("hello", "hallo")]
  metadata = builder.info.metadata
  assert metadata["dropped"]["train"] == {"empty": 1, "too_long": 1}
  assert len(metadata["sha256"]["train.en"]) == 64

  # Prepared once, then reused; a changed source file gives a new, separately built version.
  assert datasets.make_builder(data).is_prepared()
  write_corpus(corpus_dir, {"val.en": "hi\n"})
  changed = datasets.make_builder(data)
  assert changed.builder_config.name != builder.builder_config.name
  assert not changed.is_prepared()
  assert read_all(datasets.prepare(data), data, "val") == [("hi", "hallo")]


def test_parallel_text_builder_from_tsv_and_carved_splits(tmp_path):
  lines = "".join(f"sentence {i % 150}\tSatz {i}\n" for i in range(300))
  corpus_dir = write_corpus(tmp_path / "tsv", {"all.tsv": lines})
  data = data_config(tmp_path, dataset="parallel_text", source_dir=corpus_dir, carve_from="all")
  builder = datasets.prepare(data)
  splits = {name: read_all(builder, data, name) for name in ("train", "validation", "test")}
  assert sum(len(pairs) for pairs in splits.values()) == 300
  sources = {name: {source for source, _ in pairs} for name, pairs in splits.items()}
  # Duplicate sources never straddle two splits.
  assert not sources["train"] & sources["test"] and not sources["train"] & sources["validation"]
  assert len(splits["train"]) > 200


def test_multi30k(tmp_path):
  data = data_config(tmp_path, dataset="parallel_text", source_dir=str(SHARED_DATA / "multi30k"))
  builder = datasets.prepare(data)
  counts = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
  assert counts == {"train": 29000, "val": 1014, "test_2016_flickr": 1000,
                    "test_2017_flickr": 1000}
  first = datasets.load_split(builder, data, "val")[0]
  assert first["inputs"].startswith("A group of men")


def test_wmt14_newstest_and_tatoeba(tmp_path):
  data = data_config(tmp_path, dataset="parallel_text", source_dir=str(SHARED_DATA / "wmt14"))
  builder = datasets.prepare(data)
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "newstest2014": 3003}
  tatoeba = data_config(tmp_path, dataset="parallel_text",
                        source_dir=str(SHARED_DATA / "tatoeba_cmn_eng"), source_lang="zh",
                        target_lang="en", carve_from="tatoeba")
  builder = datasets.prepare(tatoeba)
  counts = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
  assert sum(counts.values()) == 29155 and counts["test"] > 1000
  first = datasets.load_split(builder, tatoeba, "test")[0]
  assert any("\u4e00" <= ch <= "\u9fff" for ch in first["inputs"])


def test_processes_read_disjoint_shards_covering_the_split(tmp_path):
  data = data_config(tmp_path)
  builder = datasets.prepare(data)
  everything = read_all(builder, data, "train")
  shards = [[(pair["inputs"], pair["targets"]) for pair in datasets.load_split(
      builder, data, "train", process_index=i, process_count=2)] for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert shards[0] + shards[1] == everything  # contiguous shares, in file order


@pytest.mark.parametrize("split, count, expected", [
    ("train", 7, lambda train, validation: train[:7]),
    ("train", None, lambda train, validation: train),
    ("train", 10_000, lambda train, validation: train),
    ("train[10:]", 5, lambda train, validation: train[10:15]),
    ("train[-5:]", 3, lambda train, validation: train[-5:-2]),
    ("validation[:3]+train", 5, lambda train, validation: validation[:3] + train[:2]),
])
def test_first_examples_of_a_split_spec(tmp_path, split, count, expected):
  data = data_config(tmp_path)
  builder = datasets.prepare(data)
  reference = expected(read_all(builder, data, "train"), read_all(builder, data, "validation"))
  spec, total = datasets.first_examples(builder, split, count)
  assert read_all(builder, data, spec) == reference
  assert total == len(reference)


def test_split_tags_name_the_examples_without_brackets(tmp_path):
  builder = datasets.prepare(data_config(tmp_path))
  tags = {spec: datasets.split_tag(builder, spec) for spec in (
      "train", "train[0:]", "train[:10]", "train[0:10]", "train[-5:]", "train[:10%]",
      "validation+train[190:]")}
  assert tags == {"train": "train", "train[0:]": "train", "train[:10]": "train.0-10",
                  "train[0:10]": "train.0-10", "train[-5:]": "train.195-200",
                  "train[:10%]": "train.0-20", "validation+train[190:]": "validation+train.190-200"}


def test_prepared_as_array_record_and_read_by_index(tmp_path):
  data = data_config(tmp_path)
  builder = datasets.prepare(data)
  assert builder.info.file_format.value == "array_record"
  assert list(pathlib.Path(builder.data_dir).glob("*.array_record-*"))
  pairs = datasets.load_split(builder, data, "train[10:20]")
  assert len(pairs) == 10 and pairs[3] == list(pairs)[3]
  assert (pairs[3]["inputs"], pairs[3]["targets"]) == read_all(builder, data, "train")[13]


def test_a_dataset_prepared_as_tfrecord_is_a_one_line_error(tmp_path):
  # What a data_dir prepared by the tf.data pipeline looks like: the info names tfrecord.
  data = data_config(tmp_path)
  info_path = pathlib.Path(datasets.prepare(data).data_dir) / "dataset_info.json"
  info_path.write_text(info_path.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(DataError, match=r"config.data.data_dir: number_words in .* was prepared "
                     r"as tfrecord, and the pipeline reads array_record: delete that directory"):
    datasets.prepare(data)


def test_catalog_dataset_through_mock_data(tmp_path):
  data = data_config(tmp_path, dataset="wmt14_translate/de-en")
  with tfds.testing.mock_data(num_examples=6):
    builder = datasets.make_builder(data)
    pairs = datasets.load_split(builder, data, "train")
    examples = [pairs[i] for i in range(len(pairs))]  # (tfds' mock has no batched reads)
  assert len(examples) == 6 and set(examples[0]) == {"inputs", "targets"}
  assert all(isinstance(text, str) for text in examples[0].values())


# Bad input: one clear line naming the file, and nothing that looks prepared.

def test_missing_directory(tmp_path):
  data = data_config(tmp_path, dataset="parallel_text", source_dir=str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match=r"corpus directory .*nowhere does not exist"):
    datasets.prepare(data)


def test_missing_target_file(tmp_path):
  corpus_dir = write_corpus(tmp_path / "c", {"train.en": "a\n"})
  data = data_config(tmp_path, dataset="parallel_text", source_dir=corpus_dir)
  with pytest.raises(DataError, match=r"train.en has no target-side file .*train.de"):
    datasets.prepare(data)


def test_line_count_mismatch_names_both_files(tmp_path):
  corpus_dir = write_corpus(tmp_path / "c", {"train.en": "a\nb\nc\n", "train.de": "x\ny\n"})
  data = data_config(tmp_path, dataset="parallel_text", source_dir=corpus_dir)
  with pytest.raises(DataError, match=r"train.en has 3 lines but .*train.de has 2"):
    datasets.prepare(data)


def test_invalid_utf8_names_file_and_line_and_leaves_nothing(tmp_path):
  corpus_dir = write_corpus(tmp_path / "c", {"train.en": b"ok\nbad \xff\xfe\n",
                                             "train.de": "gut\nschlecht\n"})
  data = data_config(tmp_path, dataset="parallel_text", source_dir=corpus_dir)
  with pytest.raises(Exception, match=r"train.en:2: invalid UTF-8"):
    datasets.prepare(data)
  assert not datasets.make_builder(data).is_prepared()
  prepared = list((tmp_path / "tfds").rglob("dataset_info.json"))
  assert prepared == []


def test_unknown_catalog_name(tmp_path):
  data = data_config(tmp_path, dataset="wmt15_translat/de-en")
  with pytest.raises(DataError,
                     match=r"unknown tfds dataset 'wmt15_translat/de-en' \(the catalog: https"):
    datasets.make_builder(data)


def test_unwritable_data_dir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  data = data_config(tmp_path, data_dir=str(blocker / "tfds"))
  with pytest.raises(DataError, match=r"config.data.data_dir .*file/tfds is not writable"):
    datasets.prepare(data)


def test_unknown_split_and_language(tmp_path):
  data = data_config(tmp_path)
  builder = datasets.prepare(data)
  with pytest.raises(DataError, match="has no split 'dev'; it has"):
    datasets.load_split(builder, data, "dev")
  with pytest.raises(DataError, match="has no split 'train\\+dev'; it has"):
    datasets.first_examples(builder, "train+dev", 5)
  with pytest.raises(DataError, match=r"split 'train\[' is not a tfds split spec"):
    datasets.load_split(builder, data, "train[")
  with pytest.raises(DataError, match="has languages en, de, not 'fr'"):
    datasets.prepare(data_config(tmp_path, target_lang="fr"))


def test_data_stats_reports_dropped_pairs_per_split(tmp_path):
  from transformer.data import stats
  from transformer.data import tokenizer as tokenizer_lib
  corpus_dir = write_corpus(tmp_path / "corpus", {
      "train.en": "a cat\n\nthe dog\n" + "x" * 3000 + "\n" + "a cow\n" * 20,
      "train.de": "eine Katze\nleer\nder Hund\nlang\n" + "eine Kuh\n" * 20,
      "val.en": "hello\n\n", "val.de": "hallo\nx\n"})
  config = common.base_config()
  config.data = data_config(tmp_path, dataset="parallel_text", source_dir=corpus_dir,
                            eval_split="val", max_train_length=16, packed_length=16)
  builder = datasets.prepare(config.data)
  train = datasets.load_split(builder, config.data, "train")
  tokenizer = tokenizer_lib.load_or_train(
      str(tmp_path), lambda features: pipeline.texts_for_tokenizer(train, 100, features),
      vocab_size=40, model_type="unigram", character_coverage=1.0, byte_fallback=False,
      normalization="nmt_nfkc")
  text = stats.report(builder, config, tokenizer, str(tmp_path / "stats"))
  header = next(line for line in text.splitlines() if line.startswith("| split"))
  columns = [c.strip() for c in header.strip("|").split("|")]
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
          for line in text.splitlines() if line.startswith(("| train", "| val"))}
  empty, long = columns.index("dropped empty"), columns.index("dropped over-long (chars)")
  assert (rows["train"][empty], rows["train"][long]) == ("1", "1")
  assert (rows["val"][empty], rows["val"][long]) == ("1", "0")
  assert "packing efficiency (train" in text
