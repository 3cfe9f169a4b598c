"""tfds builder for the generated number-words task (`number_words`): no download, from a seed."""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from transformer.data import number_words


@dataclasses.dataclass(eq=False)
class NumberWordsConfig(tfds.core.BuilderConfig):
  """Seed and split sizes of the generated task."""

  seed: int = 0
  train_size: int = 50_000
  validation_size: int = 1_000
  test_size: int = 1_000


def config_for(seed: int, train_size: int, validation_size: int, test_size: int
               ) -> NumberWordsConfig:
  """A config named after its parameters, so each variant is prepared once into data_dir."""
  return NumberWordsConfig(
      name=f"seed{seed}-{train_size}-{validation_size}-{test_size}",
      description="English number words -> German number words", seed=seed,
      train_size=train_size, validation_size=validation_size, test_size=test_size)


class NumberWords(tfds.core.GeneratorBasedBuilder):
  """English -> German number-word lists, disjoint numbers per split."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "2.0.0": "Sentences of one to three numbers."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({"en": tfds.features.Text(),
                                             "de": tfds.features.Text()}),
        supervised_keys=("en", "de"),
        disable_shuffling=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # generated
    config = self.builder_config
    sentences = number_words.sample_sentences(config.seed, {
        "train": config.train_size, "validation": config.validation_size,
        "test": config.test_size})
    return {name: self._generate_examples(values) for name, values in sentences.items()}

  def _generate_examples(self, sentences: list[tuple[int, ...]]):
    for index, numbers in enumerate(sentences):
      english, german = number_words.sentence_pair(numbers)
      yield index, {"en": english, "de": german}
