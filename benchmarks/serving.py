"""Serving: a checkpoint in our JAX decoder against its CTranslate2 (float32, int8) and Hugging
Face Marian exports: BLEU of each with signatures, how often their outputs agree, sentences/s.

    python -m benchmarks.serving --config=experiments/configs/multi30k.py \
        --checkpoint_dir=runs/m30k/averaged [--split=test_2016_flickr] [--rounds=3]

Everything runs in one process on all CPU cores (JAX's own thread pool, CTranslate2 with
`intra_threads` = cores, torch with `set_num_threads(cores)`), one engine at a time.

Quality: each engine translates the whole split at beam 4 and greedily, batch 32. Beam search
runs twice: with each engine's own length normalization at 0.6 (ours: GNMT's ((5 + |Y|) / 6)^0.6,
Sec. 6.1; CTranslate2 and Transformers: |Y|^0.6) and with none (the sum of log-probabilities,
the one rule all three share), where the share of outputs identical to ours is reported.

Speed: `--speed_sentences` sentences at batch 32 and the first `--latency_sentences` at batch 1,
beam 4 and greedy; rounds interleave the engines (round 0 warms up and compiles, uncounted), the
best round counts. Writes benchmarks/results/serving.json and serving.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import tempfile
import time
from typing import Callable, Sequence

import transformer  # noqa: F401  (first: a quiet JAX start-up)
import jax.numpy as jnp
import numpy as np

from transformer import (checkpointing, decoding, evaluation, export, inference, provenance,
                         workdir)
from transformer.config_files import load_config
from transformer.data import datasets, inputs
from transformer.plotting import pyplot
from transformer.special_ids import EOS_ID, until_eos

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BEAM, ALPHA, EXTRA_LENGTH, WIDTH_STEP = 4, 0.6, 50, 8
# (name, method, length penalty): the quality decodes of every engine.
DECODES = (("beam 4", "beam", ALPHA), ("beam 4, no length penalty", "beam", 0.0),
           ("greedy", "greedy", 0.0))

# (sources, method, length penalty) -> the target ids of each output, without EOS or padding
Translate = Callable[[list[str], str, float], list[list[int]]]


@dataclasses.dataclass(frozen=True)
class Engine:
  """One way of serving the model: `translate(batch, method, penalty)` -> target ids (all
  engines share our vocabulary)."""

  name: str
  translate: Translate


def batches(items: Sequence[str], size: int) -> list[list[str]]:
  """`items` in order, `size` at a time."""
  return [list(items[start:start + size]) for start in range(0, len(items), size)]


def padded(rows: list[list[int]], step: int = WIDTH_STEP) -> np.ndarray:
  """Rows of ids right-padded with 0 to a width rounded up to `step` (fewer compiled shapes)."""
  width = -(-max(map(len, rows)) // step) * step
  return np.array([row + [0] * (width - len(row)) for row in rows], np.int32)


def ours(loaded: checkpointing.Loaded) -> Engine:
  """Our decoder (jit-compiled, key/value cache) on the checkpoint itself."""
  def translate(sources: list[str], method: str, penalty: float) -> list[list[int]]:
    options = inference.DecodeOptions(method=method, beam_size=BEAM, alpha=penalty,
                                      extra_length=EXTRA_LENGTH)
    source_ids = padded(loaded.tokenizer.encode(sources, "source"))
    ids, _ = inference.translate_ids(loaded.model, loaded.params, jnp.asarray(source_ids),
                                     options)
    return [until_eos(row) for row in np.asarray(ids)[:, 0]]
  return Engine("ours (JAX)", translate)


def ctranslate2_engine(directory: str, tokenizer, name: str) -> Engine:
  """A CTranslate2 export on all cores, fed our SentencePiece pieces."""
  from transformer.export import to_ctranslate2  # needs the [serve] extra

  translator = to_ctranslate2.translator(directory)  # all cores
  lookup = {piece: index for index, piece in
            enumerate(tokenizer.pieces(range(tokenizer.vocab_size)))}

  def translate(sources: list[str], method: str, penalty: float) -> list[list[int]]:
    source_ids = tokenizer.encode(sources, "source")
    results = translator.translate_batch(
        [tokenizer.pieces(ids[:-1]) for ids in source_ids],  # CTranslate2 appends EOS itself
        beam_size=BEAM if method == "beam" else 1, length_penalty=penalty,
        max_decoding_length=max(map(len, source_ids)) + EXTRA_LENGTH - 1)
    return [[lookup[piece] for piece in result.hypotheses[0]] for result in results]
  return Engine(name, translate)


def huggingface_engine(directory: str) -> Engine:
  """The Marian export in Transformers (float32, PyTorch on all cores, inference mode)."""
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  model = transformers.MarianMTModel.from_pretrained(directory).eval()
  tokenizer = transformers.MarianTokenizer.from_pretrained(directory)

  def translate(sources: list[str], method: str, penalty: float) -> list[list[int]]:
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    with torch.inference_mode():
      generated = model.generate(**batch, num_beams=BEAM if method == "beam" else 1,
                                 do_sample=False, length_penalty=penalty,
                                 # the decoder start token + at most ours: source + 50
                                 max_length=1 + batch["input_ids"].shape[1] + EXTRA_LENGTH)
    return [until_eos(row) for row in generated.tolist()]  # our ids: the export keeps them
  return Engine("Hugging Face Marian", translate)


def exported_engines(config, checkpoint_dir: str, loaded: checkpointing.Loaded, root: str
                     ) -> list[Engine]:
  """Exports the checkpoint three ways under `root` and opens each."""
  made = []
  for name, quantization in (("CTranslate2 float32", "none"), ("CTranslate2 int8", "int8")):
    directory = os.path.join(root, f"ct2-{quantization}")
    print(export.export(config, "", checkpoint_dir, "ctranslate2", directory, quantization),
          flush=True)
    made.append(ctranslate2_engine(directory, loaded.tokenizer, name))
  directory = os.path.join(root, "hf")
  print(export.export(config, "", checkpoint_dir, "huggingface", directory), flush=True)
  return made + [huggingface_engine(directory)]


def translate_all(engine: Engine, sources: Sequence[str], method: str, penalty: float,
                  batch_size: int) -> list[list[int]]:
  """`engine`'s output ids for `sources`, `batch_size` at a time, in order."""
  return [ids for batch in batches(sources, batch_size)
          for ids in engine.translate(batch, method, penalty)]


def model_scores(loaded: checkpointing.Loaded, sources: Sequence[str],
                 outputs: Sequence[list[int]], alpha: float) -> np.ndarray:
  """Our beam search's objective for each output under the checkpoint: log P(output + EOS |
  source) over the GNMT penalty ((5 + length) / 6)^alpha (length counting EOS)."""
  scores = []
  for start in range(0, len(sources), 32):
    source_ids = padded(loaded.tokenizer.encode(sources[start:start + 32], "source"))
    target_ids = padded([ids + [EOS_ID] for ids in outputs[start:start + 32]])
    logprobs = inference.token_logprobs(loaded.model, loaded.params, jnp.asarray(source_ids),
                                        jnp.asarray(target_ids)[:, None])
    lengths = np.array([len(ids) + 1 for ids in outputs[start:start + 32]], np.float32)
    scores.extend(np.asarray(logprobs).sum(axis=(1, 2)) /
                  np.asarray(decoding.length_penalty(lengths, alpha)))
  return np.array(scores)


def search_comparison(loaded: checkpointing.Loaded, sources: Sequence[str],
                      ours_ids: Sequence[list[int]], theirs: Sequence[list[int]], alpha: float
                      ) -> dict[str, float | None]:
  """Where an engine's output differs from ours: the share of those sentences on which ours
  scores at least as high in our objective (`model_scores`), i.e. where the difference is the
  search finding a better hypothesis rather than a different model."""
  differing = [i for i, (a, b) in enumerate(zip(ours_ids, theirs)) if a != b]
  if not differing:
    return {"differing": 0, "ours_scores_at_least_as_high": None}
  chosen = [sources[i] for i in differing]
  ours_scores = model_scores(loaded, chosen, [ours_ids[i] for i in differing], alpha)
  their_scores = model_scores(loaded, chosen, [theirs[i] for i in differing], alpha)
  return {"differing": len(differing),
          "ours_scores_at_least_as_high": float(np.mean(ours_scores >= their_scores - 1e-5))}


def quality(engines: list[Engine], loaded: checkpointing.Loaded, sources: list[str],
            references: list[str], target_lang: str) -> list[dict]:
  """BLEU and chrF (with signatures) of every engine and decode, the output/reference length
  ratio, the share of outputs identical to ours under the same decode, and on the others,
  which hypothesis our objective prefers."""
  rows, ours_outputs = [], {}
  for name, method, penalty in DECODES:
    for engine in engines:
      start = time.perf_counter()
      outputs = translate_all(engine, sources, method, penalty, 32)
      seconds = time.perf_counter() - start
      hypotheses = [loaded.tokenizer.decode(ids) for ids in outputs]
      reference_outputs = ours_outputs.setdefault(name, outputs)
      same = sum(a == b for a, b in zip(outputs, reference_outputs)) / len(sources)
      row = {"engine": engine.name, "decode": name, "length_penalty": penalty,
             **evaluation.score(hypotheses, references, target_lang),
             "length_ratio": evaluation.output_stats(hypotheses, references)["length_ratio"],
             "identical_to_ours": same,
             **search_comparison(loaded, sources, reference_outputs, outputs, penalty),
             "seconds": seconds}
      preferred = row["ours_scores_at_least_as_high"]
      print(f"{engine.name:20s} {name:27s} BLEU {row['bleu']:.2f} chrF {row['chrf']:.2f} "
            f"length {row['length_ratio']:.3f} identical to ours {same:.1%}"
            + ("" if preferred is None else f", ours scores higher on {preferred:.0%} of the "
                                            "others") + f" ({seconds:.0f} s)", flush=True)
      rows.append(row)
  return rows


def speed(engines: list[Engine], sources: list[str], latency_sentences: int, rounds: int
          ) -> list[dict]:
  """Best-round sentences/s of every engine at beam 4 / greedy and batch 32 / 1; the rounds
  interleave the engines, round 0 (compiles, caches) uncounted."""
  settings = [(method, penalty, batch_size) for method, penalty in (("beam", ALPHA),
                                                                     ("greedy", 0.0))
              for batch_size in (32, 1)]
  times: dict[tuple[str, str, int], list[float]] = {}
  for round_number in range(rounds + 1):
    for method, penalty, batch_size in settings:
      chosen = sources if batch_size > 1 else sources[:latency_sentences]
      for engine in engines:
        start = time.perf_counter()
        translate_all(engine, chosen, method, penalty, batch_size)
        if round_number:
          times.setdefault((engine.name, method, batch_size), []).append(
              time.perf_counter() - start)
    print(f"round {round_number}/{rounds} done", flush=True)
  rows = []
  for (name, method, batch_size), seconds in times.items():
    count = len(sources) if batch_size > 1 else latency_sentences
    rows.append({"engine": name, "decode": "beam 4" if method == "beam" else "greedy",
                 "batch_size": batch_size, "sentences": count,
                 "sentences_per_sec": count / min(seconds),
                 "ms_per_batch": 1000 * min(seconds) / -(-count // batch_size),
                 "round_seconds": seconds})
  return rows


def serving_versions() -> dict[str, str]:
  """Versions of the serving engines (not part of the trainer's provenance)."""
  return {name: importlib.metadata.version(name) for name in ("ctranslate2", "transformers",
                                                               "torch")}


def plot(rows: list[dict], path: str) -> None:
  """Grouped bars: sentences/s of every engine in each setting (log scale)."""
  plt = pyplot()

  settings = list(dict.fromkeys((row["decode"], row["batch_size"]) for row in rows))
  names = list(dict.fromkeys(row["engine"] for row in rows))
  rate = {(row["engine"], row["decode"], row["batch_size"]): row["sentences_per_sec"]
          for row in rows}
  figure, axis = plt.subplots(figsize=(8, 4))
  width = 0.8 / len(names)
  for number, name in enumerate(names):
    axis.bar([i + number * width for i in range(len(settings))],
             [rate[(name, *setting)] for setting in settings], width, label=name)
  axis.set_xticks([i + 0.4 - width / 2 for i in range(len(settings))],
                  [f"{decode}, batch {size}" for decode, size in settings])
  axis.set_yscale("log")
  axis.set_ylabel("sentences/s (2 CPU cores)")
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def markdown(quality_rows: list[dict], speed_rows: list[dict]) -> str:
  """The two tables of benchmarks/README.md."""
  lines = ["| engine | decode | BLEU | chrF | length ratio | identical to ours | "
           "of the others, ours scores higher |", "|---|---|---|---|---|---|---|"]
  for r in quality_rows:
    preferred = r["ours_scores_at_least_as_high"]
    lines.append(f"| {r['engine']} | {r['decode']} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
                 f"{r['length_ratio']:.3f} | {r['identical_to_ours']:.1%} | "
                 + ("-" if preferred is None else f"{preferred:.0%} of {r['differing']}") + " |")
  lines += ["", f"BLEU: `{quality_rows[0]['bleu_signature']}`", "",
            "| engine | decode | batch | sentences/s | x ours | ms per batch |",
            "|---|---|---|---|---|---|"]
  ours_rate = {(r["decode"], r["batch_size"]): r["sentences_per_sec"] for r in speed_rows
               if r["engine"] == speed_rows[0]["engine"]}
  lines += [f"| {r['engine']} | {r['decode']} | {r['batch_size']} | "
            f"{r['sentences_per_sec']:.1f} | "
            f"{r['sentences_per_sec'] / ours_rate[(r['decode'], r['batch_size'])]:.1f} | "
            f"{r['ms_per_batch']:.1f} |" for r in speed_rows]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="the experiment config the model used")
  parser.add_argument("--checkpoint_dir", required=True,
                      help="checkpoint directory to serve (e.g. WORKDIR/averaged)")
  parser.add_argument("--split", default="", help="split to score (default: the test split)")
  parser.add_argument("--sentences", type=int, default=0,
                      help="score only the split's first N sentences (0: all; for a quick check)")
  parser.add_argument("--speed_sentences", type=int, default=256,
                      help="sentences timed at batch 32")
  parser.add_argument("--latency_sentences", type=int, default=32,
                      help="sentences timed at batch 1")
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up")
  args = parser.parse_args()
  config = load_config(args.config)
  loaded = checkpointing.load(config, args.checkpoint_dir)
  split = args.split or loaded.config.data.test_split
  evaluation_set = inputs.eval_set(datasets.prepare(loaded.config.data), loaded.config,
                                   loaded.tokenizer, split)
  count = args.sentences or len(evaluation_set.sources)
  with tempfile.TemporaryDirectory() as root:
    engines = [ours(loaded)] + exported_engines(config, args.checkpoint_dir, loaded, root)
    quality_rows = quality(engines, loaded, evaluation_set.sources[:count],
                           evaluation_set.references[:count], loaded.config.data.target_lang)
    speed_rows = speed(engines, evaluation_set.sources[:args.speed_sentences],
                       args.latency_sentences, args.rounds)
  result = {"machine": f"{os.cpu_count()} CPU cores", "split": split, "sentences": count,
            "checkpoint_dir": args.checkpoint_dir, "step": loaded.step,
            "provenance": {**provenance.code_version(), **provenance.versions(),
                           **serving_versions()},
            "quality": quality_rows, "speed": speed_rows}
  os.makedirs(RESULTS, exist_ok=True)
  workdir.write_atomically(os.path.join(RESULTS, "serving.json"),
                           json.dumps(result, indent=2) + "\n")
  plot(speed_rows, os.path.join(RESULTS, "serving.png"))
  print(markdown(quality_rows, speed_rows))


if __name__ == "__main__":
  main()
