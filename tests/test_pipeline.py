"""Packing, training stream determinism and resume, evaluation batches."""

import json

import grain
import numpy as np
import pytest

from experiments.configs import common
from transformer.data import datasets, inputs, pipeline
from transformer.data.tokenizer import EOS_ID

from test_data_sources import data_config


def random_pairs(seed, count, max_length=9):
  rng = np.random.RandomState(seed)
  return [(rng.randint(3, 50, rng.randint(1, max_length)).astype(np.int32),
           rng.randint(3, 50, rng.randint(1, max_length)).astype(np.int32))
          for _ in range(count)]


def as_dataset(pairs):
  return grain.MapDataset.source([{"inputs": s, "targets": t} for s, t in pairs]
                                 ).to_iter_dataset()


def unpack(row, feature):
  """The sentences of one packed row, checking segment ids and positions on the way."""
  tokens, segments, positions = (row[feature], row[f"{feature}_segmentation"],
                                 row[f"{feature}_position"])
  sentences = []
  for segment in range(1, segments.max() + 1):
    where = np.flatnonzero(segments == segment)
    assert np.all(np.diff(where) == 1), "a sentence is split or mixed with another"
    np.testing.assert_array_equal(positions[where], np.arange(len(where)))
    sentences.append(tuple(tokens[where]))
  assert not np.any(tokens[segments == 0]) and not np.any(positions[segments == 0])
  return sentences


@pytest.mark.parametrize("bins, inputs_length", [(1, None), (16, None), (4, 12)])
def test_packing_keeps_every_token_once_and_never_mixes_segments(bins, inputs_length):
  pairs = random_pairs(0, 300)
  rows = list(pipeline.pack(as_dataset(pairs), length=16, bins=bins,
                            inputs_length=inputs_length))
  unpacked = []
  for row in rows:
    assert row["inputs"].shape == (inputs_length or 16,) and row["targets"].shape == (16,)
    sources, targets = unpack(row, "inputs"), unpack(row, "targets")
    assert len(sources) == len(targets)
    unpacked += list(zip(sources, targets))
  expected = [(tuple(s), tuple(t)) for s, t in pairs]
  if bins == 1:  # next fit keeps the order
    assert unpacked == expected
  # Every pair appears exactly once (a finite stream's last rows are emitted too).
  assert sorted(unpacked) == sorted(expected)
  # The side whose row fills up first is nearly full.
  efficiency = max(np.mean([np.mean(row[f"{side}_segmentation"] > 0) for row in rows])
                   for side in ("inputs", "targets"))
  assert efficiency > (0.8 if bins > 1 else 0.6)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("generated")
  config = common.base_config()
  config.data = data_config(tmp_path)
  config.data.update(dict(packed_length=32, max_train_length=16, batch_size=4,
                          eval_batch_size=8, packing_bins=8))
  config.tokenizer.update(dict(vocab_size=100, sample_size=200))
  builder = datasets.prepare(config.data)
  tokenizer = inputs.get_tokenizer(builder, config, str(tmp_path / "workdir"))
  return config, builder, tokenizer


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_training_batches_are_packed_and_seeded(generated):
  config, builder, tokenizer = generated
  stream = lambda seed: iter(inputs.train_dataset(builder, config.copy_and_resolve_references(),
                                                  tokenizer))
  first = take(stream(0), 3)
  assert first[0]["inputs"].shape == (4, 32)
  assert set(first[0]) == {"inputs", "targets", "inputs_segmentation", "targets_segmentation",
                           "inputs_position", "targets_position"}
  for batch, again in zip(first, take(stream(0), 3)):
    for key in batch:
      np.testing.assert_array_equal(batch[key], again[key])
  config.seed = 1
  other = take(stream(1), 1)
  config.seed = 0
  assert not np.array_equal(other[0]["inputs"], first[0]["inputs"])


def assert_same_batches(expected, got):
  assert len(expected) == len(got)
  for want, have in zip(expected, got):
    assert set(want) == set(have)
    for key in want:
      np.testing.assert_array_equal(want[key], have[key])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_identical_batches_from_a_tiny_position(generated, workers):
  config, builder, tokenizer = generated
  config = config.copy_and_resolve_references()
  config.data.workers = workers
  make = lambda: inputs.TrainStream(builder, config, tokenizer)
  uninterrupted = take(make(), 40)  # several epochs of the 200 pairs
  interrupted = make()
  take(interrupted, 17)
  position = json.loads(json.dumps(interrupted.position()))  # what a checkpoint stores
  assert position["process_count"] == 1 and position["workers"] == workers
  assert len(json.dumps(position)) < 2000  # bytes, not a shuffle buffer's megabytes
  resumed = make()
  assert resumed.resume(position, step=17) is None
  assert_same_batches(uninterrupted[17:], take(resumed, 23))


def test_read_threads_change_neither_the_batches_nor_the_saved_position(generated):
  config, builder, tokenizer = generated
  threaded = config.copy_and_resolve_references()
  threaded.data.read_threads = 4
  unthreaded = config.copy_and_resolve_references()
  unthreaded.data.read_threads = 0
  uninterrupted = take(inputs.TrainStream(builder, unthreaded, tokenizer), 20)
  interrupted = inputs.TrainStream(builder, threaded, tokenizer)
  assert_same_batches(uninterrupted[:7], take(interrupted, 7))
  resumed = inputs.TrainStream(builder, unthreaded, tokenizer)
  assert resumed.resume(json.loads(json.dumps(interrupted.position())), step=7) is None
  assert_same_batches(uninterrupted[7:], take(resumed, 13))
  auto = config.data.copy_and_resolve_references()
  assert (auto.read_threads, inputs.read_threads(auto)) == (-1, 0)  # a local data_dir
  auto.data_dir = "gs://bucket/tfds"
  assert inputs.read_threads(auto) == 16
  auto.read_threads = 3
  assert inputs.read_threads(auto) == 3


def test_resume_on_another_layout_warns_and_starts_a_fresh_stream(generated):
  config, builder, tokenizer = generated
  interrupted = inputs.TrainStream(builder, config, tokenizer)
  take(interrupted, 5)
  position = interrupted.position()
  continued = take(interrupted, 3)
  for saved, why in [({**position, "process_count": 2}, "with 2 processes x 0 input workers"),
                     ({**position, "workers": 4}, "with 1 processes x 4 input workers"),
                     (None, "holds no input position")]:
    resumed = inputs.TrainStream(builder, config, tokenizer)
    warning = resumed.resume(saved, step=5)
    assert warning.startswith("warning: the checkpoint at step 5") and why in warning
    assert "fresh input stream seeded by step 5" in warning
    fresh = take(resumed, 3)
    assert not np.array_equal(fresh[0]["targets"], continued[0]["targets"])
    from_start = take(inputs.TrainStream(builder, config, tokenizer), 1)
    assert not np.array_equal(fresh[0]["targets"], from_start[0]["targets"])  # no repeated prefix
    again = inputs.TrainStream(builder, config, tokenizer)
    again.resume(saved, step=5)
    assert_same_batches(fresh, take(again, 3))  # the fresh stream is seeded, so reproducible


def test_evaluation_batches_keep_every_example(generated):
  config, builder, tokenizer = generated
  config.data.max_eval_length = 12
  evaluation = inputs.eval_set(builder, config, tokenizer, "validation")
  config.data.max_eval_length = 256
  indices = np.concatenate([b["index"] for b in evaluation.batches])
  assert sorted(indices[indices >= 0]) == list(range(20))
  assert len(evaluation.sources) == 20 and len(evaluation.references) == 20
  lengths = [np.sum(b["inputs"][b["index"] >= 0] > 0, axis=1).max() for b in evaluation.batches]
  assert lengths == sorted(lengths)
  for batch in evaluation.batches:
    assert batch["inputs"].shape[1] <= 12
    real = batch["index"] >= 0
    for row, index in zip(batch["inputs"][real], batch["index"][real]):
      ids = list(row[row > 0])
      assert ids[-1] == EOS_ID
      if len(ids) < 12:
        assert tokenizer.decode(ids) == evaluation.sources[index]


def test_evaluation_subset_is_the_same_for_every_process_count(generated):
  config, builder, tokenizer = generated
  first_seven = [pair["inputs"] for pair in
                 datasets.load_split(builder, config.data, "validation")][:7]
  alone = inputs.eval_set(builder, config, tokenizer, "validation", max_examples=7)
  assert sorted(alone.sources) == sorted(first_seven)
  for process_count in (2, 3):
    shares = [inputs.eval_set(builder, config, tokenizer, "validation", i, process_count,
                              max_examples=7) for i in range(process_count)]
    assert sorted(sum((share.sources for share in shares), [])) == sorted(first_seven)
    assert len({len(share.batches) for share in shares}) == 1


def test_separate_vocabularies_encode_each_side_with_its_own_model(tmp_path):
  config = common.base_config()
  config.data = data_config(tmp_path)
  config.data.update(dict(packed_length=32, max_train_length=16, batch_size=4,
                          eval_batch_size=8, packing_bins=8))
  config.tokenizer.update(dict(vocab_size=120, sample_size=200, vocabularies="separate"))
  builder = datasets.prepare(config.data)
  tokenizer = inputs.get_tokenizer(builder, config, str(tmp_path / "workdir"))
  boundary = tokenizer.source.vocab_size
  batch = next(iter(inputs.train_dataset(builder, config, tokenizer)))
  real = lambda ids: ids[ids >= 3]  # no padding, EOS or unknown
  assert real(batch["inputs"]).max() < boundary <= real(batch["targets"]).min()
  evaluation = inputs.eval_set(builder, config, tokenizer, "validation")
  for batch in evaluation.batches:
    assert real(batch["inputs"]).max() < boundary <= real(batch["targets"]).min()
  first = evaluation.batches[0]
  row = int(np.argmax(first["index"] >= 0))
  targets = first["targets"][row]
  assert tokenizer.decode(targets[targets > 0]) == evaluation.references[first["index"][row]]


def test_evaluation_batches_same_count_on_every_process(generated):
  config, builder, tokenizer = generated
  counts = [len(inputs.eval_set(builder, config, tokenizer, "validation", i, 3).batches)
            for i in range(3)]
  assert len(set(counts)) == 1


def test_max_length_must_fit_the_packed_row(generated):
  config, builder, tokenizer = generated
  with pytest.raises(ValueError, match=r"max_train_length \(40\) must not exceed"):
    pipeline.training_dataset([{"inputs": "a", "targets": "b"}], tokenizer, max_length=40,
                              packed_length=32, batch_size=2, seed=0, packing_bins=1)
