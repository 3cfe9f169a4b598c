"""Local parallel text: finding, validating and reading line-aligned files.

A corpus directory holds `{split}.{lang}` files (one sentence per line, line-aligned across the
two languages) or `{split}.tsv` files (`source<TAB>target`; a split name has no dot, so side files
such as `newstest2014.docids.tsv` are not splits). Everything that can be wrong with
them raises `DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterator

# Lines longer than this (in characters) are dropped and counted, never fed to the tokenizer.
MAX_LINE_CHARS = 2000


class DataError(ValueError):
  """Bad input data: the message names the file (and line) and what is wrong."""


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """The files of one split: two line-aligned text files, or one TSV file."""

  name: str
  source: str
  target: str | None  # None for TSV

  @property
  def paths(self) -> tuple[str, ...]:
    """Every file of the split."""
    return (self.source,) if self.target is None else (self.source, self.target)


@dataclasses.dataclass
class SplitCounts:
  """What reading a split kept and dropped."""

  kept: int = 0
  empty: int = 0
  too_long: int = 0


def find_splits(directory: str, source_lang: str, target_lang: str) -> dict[str, SplitFiles]:
  """Splits available in `directory`: `{split}.{src}` + `{split}.{tgt}` pairs or `{split}.tsv`."""
  if not os.path.isdir(directory):
    raise DataError(f"corpus directory {directory} does not exist")
  names = sorted(os.listdir(directory))
  splits = {}
  for name in names:
    stem, _, extension = name.rpartition(".")
    if extension == "tsv" and "." not in stem:  # "train.tsv"; not "newstest2014.docids.tsv"
      splits[stem] = SplitFiles(stem, os.path.join(directory, name), None)
    elif extension == source_lang:
      target = os.path.join(directory, f"{stem}.{target_lang}")
      if not os.path.exists(target):
        raise DataError(f"{os.path.join(directory, name)} has no target-side file {target}")
      splits[stem] = SplitFiles(stem, os.path.join(directory, name), target)
  if not splits:
    raise DataError(f"no *.{source_lang}/*.{target_lang} or *.tsv files in {directory}")
  return splits


def _decoded_lines(path: str) -> Iterator[str]:
  """Lines of a UTF-8 file without their line ends; invalid UTF-8 names the line."""
  try:
    handle = open(path, "rb")
  except OSError as error:
    raise DataError(f"cannot read {path}: {error.strerror}") from None
  with handle:
    for number, raw in enumerate(handle, start=1):
      try:
        yield raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as error:
        raise DataError(f"{path}:{number}: invalid UTF-8 ({error.reason} at byte "
                        f"{error.start})") from None


def _count_lines(path: str) -> int:
  with open(path, "rb") as handle:
    return sum(1 for _ in handle)


def validate(split: SplitFiles) -> None:
  """Checks that both sides exist and have the same number of lines."""
  for path in split.paths:
    if not os.path.isfile(path):
      raise DataError(f"corpus file {path} does not exist")
  if split.target is not None:
    source_lines, target_lines = _count_lines(split.source), _count_lines(split.target)
    if source_lines != target_lines:
      raise DataError(f"{split.source} has {source_lines} lines but {split.target} has "
                      f"{target_lines}: the files must be line-aligned")


def read_pairs(split: SplitFiles, counts: SplitCounts | None = None
               ) -> Iterator[tuple[int, str, str]]:
  """(line number, source, target) for every usable pair; empty and over-long pairs are counted."""
  validate(split)
  counts = counts if counts is not None else SplitCounts()
  if split.target is None:
    pairs = ((line,) for line in _decoded_lines(split.source))
  else:
    pairs = zip(_decoded_lines(split.source), _decoded_lines(split.target))
  for number, pair in enumerate(pairs, start=1):
    if split.target is None:
      fields = pair[0].split("\t")
      if len(fields) != 2:
        raise DataError(f"{split.source}:{number}: expected 2 tab-separated fields, got "
                        f"{len(fields)}")
      source, target = fields
    else:
      source, target = pair
    source, target = source.strip(), target.strip()
    if not source or not target:
      counts.empty += 1
    elif len(source) > MAX_LINE_CHARS or len(target) > MAX_LINE_CHARS:
      counts.too_long += 1
    else:
      counts.kept += 1
      yield number, source, target


def sha256_of_files(paths: tuple[str, ...]) -> dict[str, str]:
  """sha256 of each file, keyed by file name."""
  sums = {}
  for path in paths:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
      for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    sums[os.path.basename(path)] = digest.hexdigest()
  return sums


def hash_split(source: str, buckets: dict[str, float]) -> str:
  """Assigns a sentence to a carved split by a stable hash of its source side.

  Identical source sentences always land in the same split, so duplicates cannot leak from
  train into test.
  """
  value = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") / 2.0**64
  cumulative = 0.0
  for name, fraction in buckets.items():
    cumulative += fraction
    if value < cumulative:
      return name
  return name
