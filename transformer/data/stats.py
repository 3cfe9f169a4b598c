"""Dataset statistics: sentences and tokens per split, lengths, filtering, packing efficiency."""

from __future__ import annotations

import os
from typing import Sequence

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from transformer import plotting
from transformer.data import corpus, datasets, pipeline
from transformer.data.tokenizer import TokenizerBase


def token_lengths(pairs: Sequence[dict[str, str]], tokenizer: TokenizerBase
                  ) -> dict[str, np.ndarray]:
  """Tokens per sentence (EOS included) of each side."""
  lengths = {feature: [] for feature in pipeline.FEATURES}
  pairs = list(pairs)
  for start in range(0, len(pairs), pipeline.TOKENIZE_BATCH):
    for example in pipeline.encode_pairs(tokenizer, pairs[start:start + pipeline.TOKENIZE_BATCH]):
      for feature in pipeline.FEATURES:
        lengths[feature].append(len(example[feature]))
  return {feature: np.asarray(values, np.int64) for feature, values in lengths.items()}


def packing_efficiency(pairs: Sequence[dict[str, str]], tokenizer: TokenizerBase,
                       data: ml_collections.ConfigDict) -> dict[str, float]:
  """Non-pad fraction of the packed rows that hold one pass over the split, per side, packed
  as training packs them (a repeated stream, so the last bins are as full as any)."""
  stream = grain.MapDataset.source(pairs).repeat().to_iter_dataset(pipeline.read_options(0))
  rows = pipeline.packed_rows(stream, tokenizer, max_length=data.max_train_length,
                              packed_length=data.packed_length, packing_bins=data.packing_bins,
                              packed_inputs_length=data.packed_inputs_length)
  filled = {feature: [] for feature in pipeline.FEATURES}
  kept = sum(int(max(s, t) <= data.max_train_length)
             for s, t in zip(*token_lengths(pairs, tokenizer).values()))
  packed = 0
  for row in rows:
    if packed >= kept:
      break
    packed += int(row["targets_segmentation"].max())
    for feature in pipeline.FEATURES:
      filled[feature].append(np.mean(row[f"{feature}_segmentation"] > 0))
  return {feature: float(np.mean(values)) if values else 0.0
          for feature, values in filled.items()}


def split_table(builder: tfds.core.DatasetBuilder, data: ml_collections.ConfigDict,
                tokenizer: TokenizerBase) -> tuple[list[dict[str, object]], dict[str, dict]]:
  """One row of statistics per split, and the length arrays for plotting."""
  rows, all_lengths = [], {}
  dropped = (builder.info.metadata or {}).get("dropped", {})  # parallel_text records these
  for split in builder.info.splits:
    lengths = token_lengths(datasets.load_split(builder, data, split), tokenizer)
    source, target = lengths["inputs"], lengths["targets"]
    too_long = np.mean((source > data.max_train_length) | (target > data.max_train_length))
    rows.append({
        "split": split, "pairs": len(source), "source tokens": int(source.sum()),
        "target tokens": int(target.sum()), "mean source length": float(source.mean()),
        "mean target length": float(target.mean()), "max length": int(max(source.max(),
                                                                         target.max())),
        "filtered (> max_train_length)": float(too_long),
        "dropped empty": int(dropped.get(split, {}).get("empty", 0)),
        "dropped over-long (chars)": int(dropped.get(split, {}).get("too_long", 0))})
    all_lengths[split] = lengths
  return rows, all_lengths


def plot_lengths(all_lengths: dict[str, dict], path: str) -> None:
  """Histogram of token lengths per split and side, as a PNG."""
  plt = plotting.pyplot()
  figure, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=False)
  for axis, feature, title in zip(axes, pipeline.FEATURES, ("source", "target")):
    for split, lengths in all_lengths.items():
      axis.hist(lengths[feature], bins=range(0, int(lengths[feature].max()) + 2),
                histtype="step", density=True, label=split)
    axis.set_title(f"{title} length (tokens, EOS included)")
    axis.set_xlabel("tokens")
  axes[0].set_ylabel("fraction of sentences")
  axes[1].legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def report(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict,
           tokenizer: TokenizerBase, output_dir: str) -> str:
  """Markdown statistics of every split plus packing efficiency; writes `lengths.png`."""
  data = config.data
  rows, all_lengths = split_table(builder, data, tokenizer)
  efficiency = packing_efficiency(datasets.load_split(builder, data, data.train_split),
                                  tokenizer, data)
  headers = list(rows[0])
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for row in rows:
    cells = [f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
             for v in row.values()]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"vocabulary: {tokenizer.vocab_size} SentencePiece pieces "
               f"({config.tokenizer.model_type})")
  lines.append("dropped: pairs with an empty side, and pairs with a line over "
               f"{corpus.MAX_LINE_CHARS} characters, when the dataset was prepared")
  lines.append(f"packing efficiency ({data.train_split}, rows of "
               f"{data.packed_inputs_length or data.packed_length}/{data.packed_length}, "
               f"max_train_length {data.max_train_length}, {data.packing_bins} bins): source "
               f"{efficiency['inputs']:.3f}, target {efficiency['targets']:.3f}")
  os.makedirs(output_dir, exist_ok=True)
  plot_path = os.path.join(output_dir, "lengths.png")
  plot_lengths(all_lengths, plot_path)
  lines.append(f"length histogram: {plot_path}")
  return "\n".join(lines)
