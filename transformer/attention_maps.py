"""`--mode=attention`: heatmaps of a checkpoint's encoder, decoder and encoder-decoder attention
for one sentence, labelled with its subword pieces."""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from transformer import checkpointing, inference, plotting
from transformer import workdir as workdir_lib
from transformer.data.tokenizer import EOS_ID
from transformer.model import Transformer


def attention_maps(config: ml_collections.ConfigDict, workdir: str, sentence: str,
                   directory: str | None = None) -> list[str]:
  """Heatmaps of encoder, decoder and encoder-decoder attention for one sentence (PNG files).

  The decoder side is the model's own translation, so the maps show what it aligns.
  """
  loaded = checkpointing.load(config, directory or workdir_lib.checkpoints(workdir))
  model = Transformer(loaded.model.config.replace(attention_kernel="xla"))  # sows the weights
  tokenizer = loaded.tokenizer
  source = np.asarray(tokenizer.encode([sentence], "source"), np.int32)
  options = inference.DecodeOptions.from_config(loaded.config.decode)
  ids, _ = inference.translate_ids(model, loaded.params, source, options)
  target = np.asarray(ids)[0, 0]
  target = target[:int(np.argmax(target == EOS_ID)) + 1] if EOS_ID in target else target
  _, variables = model.apply({"params": loaded.params}, source, target[None],
                             mutable=["intermediates"])
  weights = attention_weights(variables["intermediates"])
  source_pieces = tokenizer.pieces(source[0], "source")
  target_pieces = tokenizer.pieces(target, "target")
  decoder_inputs = ["<s>"] + target_pieces[:-1]
  labels = {"encoder_self_attention": (source_pieces, source_pieces),
            "decoder_self_attention": (decoder_inputs, decoder_inputs),
            "encoder_decoder_attention": (decoder_inputs, source_pieces)}
  output_dir = os.path.join(workdir, "attention")
  os.makedirs(output_dir, exist_ok=True)
  paths = []
  for kind, per_layer in weights.items():
    layers = [per_layer[i] for i in config.eval.attention_layers]
    layer_numbers = [range(len(per_layer))[i] for i in config.eval.attention_layers]
    path = os.path.join(output_dir, f"{kind}.png")
    plot_attention(layers, layer_numbers, list(config.eval.attention_heads), *labels[kind], kind,
                   path)
    paths.append(path)
  return paths


def attention_weights(intermediates: Any) -> dict[str, list[np.ndarray]]:
  """Sown attention weights `[heads, queries, keys]` per layer, by kind of attention.

  Layers are `layer_0`, `layer_1`, ... or, with `scan_layers`, one `layers` entry whose arrays
  carry the layer on a leading axis.
  """
  found: dict[str, list[np.ndarray]] = {"encoder_self_attention": [],
                                        "decoder_self_attention": [],
                                        "encoder_decoder_attention": []}
  for stack, kinds in (("encoder", {"self_attention": "encoder_self_attention"}),
                       ("decoder", {"self_attention": "decoder_self_attention",
                                    "encoder_decoder_attention": "encoder_decoder_attention"})):
    layers = intermediates[stack]["layers"]
    for module, kind in kinds.items():
      if "layers" in layers:  # scanned: [layers, batch, heads, queries, keys]
        stacked = np.asarray(layers["layers"][module]["attention_weights"][0])
        found[kind] += [per_layer[0] for per_layer in stacked]
        continue
      for name in sorted(layers, key=lambda n: int(n.split("_")[-1])):
        found[kind].append(np.asarray(layers[name][module]["attention_weights"][0])[0])
  return found


def plot_attention(layers: list[np.ndarray], layer_numbers: list[int], heads: list[int],
                   query_labels: list[str], key_labels: list[str], title: str, path: str) -> None:
  """A grid of heatmaps (rows: layers, columns: heads) labelled with subword pieces."""
  plt = plotting.pyplot()
  figure, axes = plt.subplots(len(layers), len(heads), squeeze=False,
                              figsize=(1 + 0.35 * len(key_labels) * len(heads),
                                       1 + 0.35 * len(query_labels) * len(layers)))
  for row, (weights, number) in enumerate(zip(layers, layer_numbers)):
    for column, head in enumerate(heads):
      axis = axes[row][column]
      axis.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=1.0)
      axis.set_xticks(range(len(key_labels)), key_labels, rotation=90, fontsize=7)
      axis.set_yticks(range(len(query_labels)), query_labels, fontsize=7)
      axis.set_title(f"layer {number} head {head}", fontsize=8)
  figure.suptitle(title.replace("_", " "))
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
