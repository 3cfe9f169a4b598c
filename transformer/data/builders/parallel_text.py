"""tfds builder for local parallel text (`parallel_text`), prepared once into `data_dir`.

The config name carries a digest of the source files' sha256 sums, so a changed source file gives
a new dataset version that is built afresh, never mixed with the old one; the sums are also
recorded in the prepared dataset's metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import tensorflow_datasets as tfds

from transformer.data import corpus

DEFAULT_CARVE = (("train", 0.9), ("validation", 0.05), ("test", 0.05))


@dataclasses.dataclass(eq=False)
class ParallelTextConfig(tfds.core.BuilderConfig):
  """Where the corpus lives and which two languages it pairs.

  `carve_from` names a split (e.g. Tatoeba's single file) to cut into `carve_fractions` by a
  stable hash of the source sentence; empty means use the directory's splits as they are.
  """

  source_dir: str = ""
  source_lang: str = "en"
  target_lang: str = "de"
  carve_from: str = ""
  carve_fractions: tuple[tuple[str, float], ...] = DEFAULT_CARVE
  checksums: tuple[tuple[str, str], ...] = ()


def config_for(source_dir: str, source_lang: str, target_lang: str, carve_from: str = "",
               carve_fractions: tuple[tuple[str, float], ...] = DEFAULT_CARVE
               ) -> ParallelTextConfig:
  """Validates the corpus and names the config after its content."""
  splits = corpus.find_splits(source_dir, source_lang, target_lang)
  if carve_from and carve_from not in splits:
    raise corpus.DataError(f"cannot carve splits from '{carve_from}': {source_dir} has only "
                           f"{', '.join(splits)}")
  paths: tuple[str, ...] = ()
  for split in splits.values():
    corpus.validate(split)
    paths += split.paths
  checksums = tuple(sorted(corpus.sha256_of_files(paths).items()))
  fingerprint = json.dumps([checksums, carve_from, carve_fractions]).encode()
  digest = hashlib.sha256(fingerprint).hexdigest()[:16]
  return ParallelTextConfig(
      name=f"{source_lang}-{target_lang}-{digest}",
      description=f"{source_dir} ({source_lang}-{target_lang})",
      source_dir=source_dir, source_lang=source_lang, target_lang=target_lang,
      carve_from=carve_from, carve_fractions=carve_fractions, checksums=checksums)


class ParallelText(tfds.core.GeneratorBasedBuilder):
  """Line-aligned `{split}.{lang}` (or `{split}.tsv`) files of a local directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=config.description,
        features=tfds.features.FeaturesDict({
            config.source_lang: tfds.features.Text(),
            config.target_lang: tfds.features.Text(),
        }),
        supervised_keys=(config.source_lang, config.target_lang),
        disable_shuffling=True,  # keep file order: hypotheses line up with the files
        metadata=tfds.core.MetadataDict(sha256=dict(config.checksums), dropped={}))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # local files only
    config = self.builder_config
    splits = corpus.find_splits(config.source_dir, config.source_lang, config.target_lang)
    if config.carve_from:
      carved = splits[config.carve_from]
      return {name: self._generate_examples(carved, name) for name, _ in config.carve_fractions}
    return {name: self._generate_examples(split, None) for name, split in splits.items()}

  def _generate_examples(self, split: corpus.SplitFiles, carved_name: str | None):
    config = self.builder_config
    counts = corpus.SplitCounts()
    buckets = dict(config.carve_fractions)
    for number, source, target in corpus.read_pairs(split, counts):
      if carved_name is None or corpus.hash_split(source, buckets) == carved_name:
        yield number, {config.source_lang: source, config.target_lang: target}
    self.info.metadata["dropped"][carved_name or split.name] = {
        "empty": counts.empty, "too_long": counts.too_long}
