"""Translation quality: decoding an evaluation set, BLEU (in the style asked for) and chrF.

The BLEU styles and what each means are in `bleu_styles.py`; every score carries its
sacreBLEU signature and, for the tokenized styles, the recipe applied before it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
import sacrebleu

from transformer import bleu_styles, inference, sharding
from transformer.data.inputs import EvalSet
from transformer.data.tokenizer import TokenizerBase
from transformer.model import Transformer

def score(hypotheses: Sequence[str], references: Sequence[str], target_lang: str,
          style: str = "sacrebleu", extra_styles: Sequence[str] = ()) -> dict[str, Any]:
  """BLEU (of `style`) and chrF of detokenized hypotheses, with sacreBLEU signatures, over
  every process's sentences (gathered once); `extra_styles` score the same hypotheses in other
  BLEU styles too (`extra_bleu`)."""
  hypotheses, references = all_processes(hypotheses), all_processes(references)
  chrf = sacrebleu.metrics.CHRF()
  chrf_score = chrf.corpus_score(hypotheses, [references])
  result = {**_corpus_bleu(hypotheses, references, target_lang, style), "bleu_style": style,
            "chrf": chrf_score.score, "chrf_signature": str(chrf.get_signature())}
  if extra_styles:
    result["extra_bleu"] = {extra: _corpus_bleu(hypotheses, references, target_lang, extra)
                            for extra in extra_styles}
  return result


def _corpus_bleu(hypotheses: list[str], references: list[str], target_lang: str, style: str
                 ) -> dict[str, Any]:
  """BLEU of `style` of the whole corpus (every process's sentences, already gathered)."""
  transform, metric, recipe = bleu_styles.preparation(style, target_lang)
  result = metric.corpus_score([transform(h) for h in hypotheses],
                               [[transform(r) for r in references]])
  signature = str(metric.get_signature())
  return {"bleu": result.score,
          "bleu_signature": signature if style == "sacrebleu" else f"{recipe}|{signature}"}


# A piece of two or more characters repeated three or more times in a row ("吃吃吃吃吃吃",
# "帮我帮我帮我", "the the the ").
REPETITION_LOOP = re.compile(r"(.{2,}?)\1\1", re.DOTALL)
UNKNOWN_SURFACE = "\u2047"  # "⁇": how SentencePiece writes the unknown id in decoded text


def output_stats(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """What degenerate outputs look like in numbers: the length ratio in characters, and the
  fractions of outputs that hold a repetition loop, an unknown token, or are over twice as long
  as their reference."""
  count = max(len(hypotheses), 1)
  return {
      "length_ratio": sum(map(len, hypotheses)) / max(sum(map(len, references)), 1),
      "loops": sum(bool(REPETITION_LOOP.search(h)) for h in hypotheses) / count,
      "unknown": sum(UNKNOWN_SURFACE in h for h in hypotheses) / count,
      "over_twice_reference": sum(len(h) > 2 * len(r) for h, r in zip(hypotheses, references))
                              / count}


def all_processes(texts: Sequence[str]) -> list[str]:
  """Every process's `texts`, process 0's first (this process's own on one process)."""
  if jax.process_count() == 1:
    return list(texts)
  data = np.frombuffer(json.dumps(list(texts)).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size]))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [text for process, size in enumerate(sizes)
          for text in json.loads(gathered[process, :size].tobytes().decode("utf-8"))]


def translate_eval_set(model: Transformer, params: Any, evaluation: EvalSet,
                       tokenizer: TokenizerBase, options: inference.DecodeOptions, mesh
                       ) -> tuple[list[str], list[list[tuple[str, float]]]]:
  """Hypotheses in split order, and each sentence's n-best list (text, score)."""
  hypotheses = [""] * len(evaluation.sources)
  nbest: list[list[tuple[str, float]]] = [[] for _ in evaluation.sources]
  local_rows = evaluation.batches[0]["inputs"].shape[0] if evaluation.batches else 0
  for number, batch in enumerate(evaluation.batches):
    inputs = sharding.global_batch({"inputs": batch["inputs"]}, mesh)["inputs"]
    ids, scores = inference.translate_ids(model, params, inputs, options,
                                          options.batch_rng(number))
    ids, scores = _local_rows(ids, local_rows), _local_rows(scores, local_rows)
    for row, index in enumerate(batch["index"]):
      if index < 0:
        continue
      texts = [(tokenizer.decode(ids[row, k]), float(scores[row, k]))
               for k in range(ids.shape[1])]
      nbest[index] = texts
      hypotheses[index] = texts[0][0]
  return hypotheses, nbest


def _local_rows(array: jax.Array, local_rows: int) -> np.ndarray:
  """This process's rows of a batch-sharded global array."""
  if jax.process_count() == 1:
    return np.asarray(array)
  gathered = np.asarray(multihost_utils.process_allgather(array, tiled=True))
  start = jax.process_index() * local_rows
  return gathered[start:start + local_rows]
