"""Datasets by name: the tfds catalog, our `parallel_text` builder and the generated task.

Datasets are prepared as ArrayRecord files and read through tfds data sources (random access,
no TensorFlow). Every split comes out as `TextPairs`: `{"inputs": source text, "targets":
target text}` examples of each process's own share, in file order.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator

import ml_collections
import tensorflow_datasets as tfds
from etils import epath

from transformer.data.builders import number_words as number_words_builder
from transformer.data.builders import parallel_text
from transformer.data.corpus import DataError

GENERATED = "number_words"
LOCAL = "parallel_text"
FILE_FORMAT = "array_record"
CATALOG = "https://www.tensorflow.org/datasets/catalog/overview"
TRANSLATION_CATALOG = "tensorflow_datasets.translate"  # wmt14/17/19_translate, ted_hrlr, opus, ...
_READ_CHUNK = 1024
_COPY_CHUNK = 16 << 20


def make_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder for `data.dataset` (not yet prepared)."""
  if data.dataset == GENERATED:
    config = number_words_builder.config_for(data.generated.seed, data.generated.train_size,
                                             data.generated.validation_size,
                                             data.generated.test_size)
    return number_words_builder.NumberWords(config=config, data_dir=data.data_dir or None)
  if data.dataset == LOCAL:
    if not data.source_dir:
      raise DataError("config.data.source_dir must name the corpus directory for parallel_text")
    config = parallel_text.config_for(os.path.abspath(os.path.expanduser(data.source_dir)),
                                      data.source_lang, data.target_lang, data.carve_from)
    return parallel_text.ParallelText(config=config, data_dir=data.data_dir or None)
  # Without TensorFlow, tfds registers no catalog builders until their modules are imported.
  importlib.import_module(TRANSLATION_CATALOG)
  try:
    return tfds.builder(data.dataset, data_dir=data.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"config.data.dataset: unknown tfds dataset '{data.dataset}' (the catalog: "
                    f"{CATALOG}); or use '{GENERATED}' / '{LOCAL}'") from None


def check_writable(data_dir: str) -> None:
  """Fails early, naming the directory, when prepared data could not be written there."""
  if not data_dir or data_dir.startswith("gs://"):
    return
  try:
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=data_dir):
      pass
  except OSError as error:
    raise DataError(f"config.data.data_dir {data_dir} is not writable: {error.strerror}") from None


@contextlib.contextmanager
def preparation_lock(dataset_directory: str) -> Iterator[None]:
  """Holds an exclusive lock beside `dataset_directory` (a builder's versioned data directory),
  so processes preparing the same dataset at once (two sweep points or quality probes on a
  fresh machine) take turns instead of racing for tfds' final rename."""
  parent = os.path.dirname(os.path.normpath(dataset_directory))
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, ".prepare.lock"), "w", encoding="utf-8") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Makes the builder and prepares the dataset into `data.data_dir` unless already there.

  Datasets are written as ArrayRecord; one prepared earlier as TFRecord (by a version of this
  code that read it through tf.data) is a `DataError` saying how to prepare it again. tfds
  writes into a temporary directory and renames it when complete, so a failed build leaves
  nothing that looks like a prepared dataset. On a local disk, concurrent preparations of one
  dataset wait for each other; the builder is made again under the lock so that it reads what
  another process prepared. An already prepared dataset takes neither the lock nor a second
  builder. A `gs://` data_dir is prepared through the local disk (`upload_prepared`).
  """
  builder = make_builder(data)
  check_writable(data.data_dir)
  tfds.disable_progress_bar()
  if not builder.is_prepared():
    directory = str(builder.data_dir)
    if directory.startswith("gs://"):
      upload_prepared(data, directory)
      builder = make_builder(data)
    else:
      with preparation_lock(directory):
        builder = make_builder(data)
        builder.download_and_prepare(file_format=FILE_FORMAT)
  check_file_format(builder, data)
  for pair_language in (data.source_lang, data.target_lang):
    if pair_language not in builder.info.features:
      raise DataError(f"config.data.source_lang/target_lang: dataset {data.dataset} has "
                      f"languages {', '.join(builder.info.features)}, not '{pair_language}'")
  return builder


def upload_prepared(data: ml_collections.ConfigDict, bucket_directory: str) -> None:
  """Prepares the dataset under a local temporary directory and copies it to `bucket_directory`.

  ArrayRecord files cannot be written to `gs://` directly (they are read from there). The
  copy writes `dataset_info.json`, which marks a dataset prepared, last, so an interrupted
  upload is prepared again rather than read half-copied.
  """
  with tempfile.TemporaryDirectory(prefix="tfds-") as staging:
    local = ml_collections.ConfigDict(data.to_dict())
    local.data_dir = staging
    builder = make_builder(local)
    builder.download_and_prepare(file_format=FILE_FORMAT)
    local_directory = pathlib.Path(builder.data_dir)
    files = sorted((path for path in local_directory.rglob("*") if path.is_file()),
                   key=lambda path: path.name == "dataset_info.json")
    for path in files:
      target = epath.Path(bucket_directory) / path.relative_to(local_directory).as_posix()
      target.parent.mkdir(parents=True, exist_ok=True)
      with path.open("rb") as source, target.open("wb") as destination:
        shutil.copyfileobj(source, destination, _COPY_CHUNK)


def prepared_summary(builder: tfds.core.DatasetBuilder) -> str:
  """One line for `--mode=prepare`: the dataset, where its ArrayRecord files are, split sizes."""
  splits = ", ".join(f"{name} {split.num_examples:,}" for name, split in
                     sorted(builder.info.splits.items()))
  return f"{builder.info.full_name} prepared as {FILE_FORMAT} in {builder.data_dir}: {splits}"


def check_file_format(builder: tfds.core.DatasetBuilder, data: ml_collections.ConfigDict) -> None:
  """A `DataError` unless the prepared files are ArrayRecord (what the data sources read)."""
  prepared = builder.info.file_format
  if prepared is not None and prepared.value != FILE_FORMAT:
    raise DataError(
        f"config.data.data_dir: {data.dataset} in {builder.data_dir} was prepared as "
        f"{prepared.value}, and the pipeline reads {FILE_FORMAT}: delete that directory (or pick "
        "another --config.data.data_dir) and run again to prepare it as ArrayRecord")


def split_ranges(builder: tfds.core.DatasetBuilder, split: str) -> list[tuple[str, int, int]]:
  """`split` ('validation', 'train[:10%]', 'train+validation[:50]') as (split name, start,
  stop) ranges of examples, in reading order."""
  try:
    instruction = tfds.core.ReadInstruction.from_spec(split)
  except ValueError:
    raise DataError(f"split '{split}' is not a tfds split spec such as 'validation' or "
                    "'train[:10%]'") from None
  try:
    parts = instruction.to_absolute(builder.info.splits)
  except ValueError:
    raise DataError(f"dataset {builder.name} has no split '{split}'; it has "
                    f"{', '.join(builder.info.splits)}") from None
  return [(part.splitname, part.from_ or 0,
           builder.info.splits[part.splitname].num_examples if part.to is None else part.to)
          for part in parts]


def split_tag(builder: tfds.core.DatasetBuilder, split: str) -> str:
  """`split` as a file-name tag: 'test' for a whole split, 'test.0-100' for `test[:100]` (no
  brackets, and specs of the same examples get the same tag)."""
  return "+".join(
      name if (start, stop) == (0, builder.info.splits[name].num_examples)
      else f"{name}.{start}-{stop}" for name, start, stop in split_ranges(builder, split))


def first_examples(builder: tfds.core.DatasetBuilder, split: str,
                   count: int | None) -> tuple[str, int]:
  """A split spec for the first `count` examples of `split` in reading order (all of it if
  None), and how many examples it holds.

  A sliced spec rather than `take(count)` of each process's share: every process count then
  evaluates the same subset (`load_split` shares it out).
  """
  specs, total = [], 0
  for name, start, stop in split_ranges(builder, split):
    if count is not None:
      stop = min(stop, start + count - total)
    if stop > start:
      specs.append(f"{name}[{start}:{stop}]")
      total += stop - start
  return "+".join(specs), total


class TextPairs:
  """A split's examples as `{"inputs": source text, "targets": target text}`, by index.

  Random access over the prepared ArrayRecord files (a tfds data source); picklable, so Grain's
  worker processes can read it.
  """

  def __init__(self, source: Any, source_lang: str, target_lang: str):
    self.source, self.source_lang, self.target_lang = source, source_lang, target_lang

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, str]:
    return self._pair(self.source[index])

  def __iter__(self) -> Iterator[dict[str, str]]:
    for start in range(0, len(self), _READ_CHUNK):
      indices = range(start, min(start + _READ_CHUNK, len(self)))
      yield from (self._pair(record) for record in self.source.__getitems__(indices))

  def _pair(self, record: dict[str, bytes | str]) -> dict[str, str]:
    return {"inputs": _text(record[self.source_lang]), "targets": _text(record[self.target_lang])}


def _text(value: bytes | str) -> str:
  # Text features read as bytes from the files (tfds' mock_data gives str).
  return value.decode("utf-8") if isinstance(value, bytes) else value


def load_split(builder: tfds.core.DatasetBuilder, data: ml_collections.ConfigDict, split: str,
               process_index: int = 0, process_count: int = 1) -> TextPairs:
  """This process's share of `split`, in file order.

  Shares of different processes are disjoint and together cover the split.
  """
  if builder.info.splits:
    split_ranges(builder, split)  # a clear error for a split the dataset does not have
  shard = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count)
  return TextPairs(builder.as_data_source(split=shard), data.source_lang, data.target_lang)
