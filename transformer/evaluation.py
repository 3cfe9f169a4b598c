"""Translation quality: decoding an evaluation set, sacreBLEU and chrF, attention maps.

Two BLEUs, never to be mixed up:
- `sacrebleu` (default): detokenized output against raw references with sacreBLEU's `13a`
  tokenizer (`zh` for Chinese targets); the signature printed with every score makes it
  reproducible.
- `paper`: the paper's WMT14 recipe, tokenized BLEU with compound splitting (tensor2tensor's
  `get_ende_bleu.sh`: Moses tokenization, then "a-b" -> "a ##AT##-##AT## b"). We approximate the
  Moses tokenizer with sacreBLEU's `intl` tokenizer; such scores run about 1 BLEU above
  sacreBLEU's on newstest2014 and are only comparable to papers that used the same script.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
import sacrebleu

from transformer import inference, sharding
from transformer.data.inputs import EvalSet
from transformer.data.tokenizer import Tokenizer
from transformer.model import Transformer

_COMPOUND_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")


def split_compounds(text: str) -> str:
  """"Zwei-Wege" -> "Zwei ##AT##-##AT## Wege", as in the paper's BLEU script."""
  return _COMPOUND_HYPHEN.sub(" ##AT##-##AT## ", text)


def bleu_tokenizer(target_lang: str) -> str:
  """sacreBLEU's tokenizer for the target language."""
  return "zh" if target_lang.lower().startswith("zh") else "13a"


def score(hypotheses: Sequence[str], references: Sequence[str], target_lang: str,
          style: str = "sacrebleu") -> dict[str, Any]:
  """BLEU and chrF of detokenized hypotheses, with sacreBLEU signatures."""
  if style not in ("sacrebleu", "paper"):
    raise ValueError(f"config.eval.bleu_style must be one of sacrebleu, paper; got {style!r}")
  if style == "paper":
    hypotheses = [split_compounds(h) for h in hypotheses]
    references = [split_compounds(r) for r in references]
    bleu = sacrebleu.metrics.BLEU(tokenize="intl")
  else:
    bleu = sacrebleu.metrics.BLEU(tokenize=bleu_tokenizer(target_lang))
  chrf = sacrebleu.metrics.CHRF()
  bleu_score = _corpus_score(bleu, hypotheses, references)
  chrf_score = _corpus_score(chrf, hypotheses, references)
  return {"bleu": bleu_score.score, "bleu_signature": str(bleu.get_signature()),
          "bleu_style": style, "chrf": chrf_score.score,
          "chrf_signature": str(chrf.get_signature())}


def _corpus_score(metric: Any, hypotheses: Sequence[str], references: Sequence[str]) -> Any:
  """A corpus score over every process's sentences: sufficient statistics are summed."""
  if jax.process_count() == 1:
    return metric.corpus_score(list(hypotheses), [list(references)])
  from jax.experimental import multihost_utils  # only multi-host runs need it
  statistics = np.sum(metric._extract_corpus_statistics(list(hypotheses), [list(references)]),
                      axis=0)
  total = np.sum(multihost_utils.process_allgather(np.asarray(statistics)), axis=0)
  return metric._compute_score_from_stats(total.tolist())


def translate_eval_set(model: Transformer, params: Any, evaluation: EvalSet,
                       tokenizer: Tokenizer, options: inference.DecodeOptions, mesh
                       ) -> tuple[list[str], list[list[tuple[str, float]]]]:
  """Hypotheses in split order, and each sentence's n-best list (text, score)."""
  hypotheses = [""] * len(evaluation.sources)
  nbest: list[list[tuple[str, float]]] = [[] for _ in evaluation.sources]
  local_rows = evaluation.batches[0]["inputs"].shape[0] if evaluation.batches else 0
  for batch in evaluation.batches:
    inputs = sharding.global_batch({"inputs": batch["inputs"]}, mesh)["inputs"]
    ids, scores = inference.translate_ids(model, params, inputs, options)
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
  from jax.experimental import multihost_utils  # only multi-host runs need it
  gathered = np.asarray(multihost_utils.process_allgather(array, tiled=True))
  start = jax.process_index() * local_rows
  return gathered[start:start + local_rows]
