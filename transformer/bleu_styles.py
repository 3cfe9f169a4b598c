"""The BLEUs the literature reports, each computed the way its readers assume.

- `sacrebleu` (default): detokenized output against raw references, sacreBLEU's `13a` tokenizer
  (`zh` for Chinese targets). The signature makes it reproducible; use it to compare systems.
- `paper`: the Transformer paper's WMT14 recipe (tensor2tensor's `get_ende_bleu.sh`): Moses
  `tokenizer.perl -l LANG` (sacremoses, its default escaping), then compounds split as
  `perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'`, then `multi-bleu.perl` (no smoothing) on
  those tokens. About 1 BLEU above sacreBLEU on newstest2014.
- `multi30k`: the multimodal-MT literature's Multi30k BLEU (e.g. Wu et al. 2021): Moses
  punctuation normalisation and tokenization, lowercased, BLEU on those tokens.
Only numbers of the same style are comparable.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Callable, Sequence

import sacrebleu

if TYPE_CHECKING:
  import sacremoses

STYLES = ("sacrebleu", "paper", "multi30k")
_PAPER_COMPOUND = re.compile(r"(\S)-(\S)")


def sacrebleu_tokenizer(target_lang: str) -> str:
  """sacreBLEU's tokenizer for the target language."""
  return "zh" if target_lang.lower().startswith("zh") else "13a"


@functools.lru_cache(maxsize=None)
def _moses(lang: str) -> sacremoses.MosesTokenizer:
  # Imported at first use: sacremoses compiles its patterns at import (0.35 s of every trainer
  # start-up), and only the paper and multi30k styles use it.
  import sacremoses  # noqa: PLC0415
  return sacremoses.MosesTokenizer(lang=lang)


@functools.lru_cache(maxsize=None)
def _normalizer(lang: str) -> sacremoses.MosesPunctNormalizer:
  import sacremoses  # noqa: PLC0415  (as in _moses)
  return sacremoses.MosesPunctNormalizer(lang=lang)


def paper_tokens(text: str, lang: str) -> str:
  """`tokenizer.perl -l LANG` then the `##AT##` compound split of get_ende_bleu.sh."""
  tokenized = _moses(lang).tokenize(text, return_str=True, escape=True)
  return _PAPER_COMPOUND.sub(r"\1 ##AT##-##AT## \2", tokenized)


def multi30k_tokens(text: str, lang: str) -> str:
  """Moses punctuation normalisation and tokenization, lowercased."""
  normalized = _normalizer(lang).normalize(text)
  return _moses(lang).tokenize(normalized, return_str=True, escape=False).lower()


def parse_list(text: str, key: str) -> list[str]:
  """Style names of a comma-separated config value (`key` names it in the error)."""
  styles = [name.strip() for name in text.split(",") if name.strip()]
  unknown = [name for name in styles if name not in STYLES]
  if unknown:
    raise ValueError(f"{key}: unknown BLEU style(s) {', '.join(unknown)}; known: "
                     f"{', '.join(STYLES)}")
  return styles


def preparation(style: str, target_lang: str) -> tuple[Callable[[str], str], sacrebleu.BLEU, str]:
  """(text -> what BLEU sees, the sacreBLEU scorer, the recipe's name for the signature)."""
  if style not in STYLES:
    raise ValueError(f"config.eval.bleu_style must be one of {', '.join(STYLES)}; got {style!r}")
  lang = target_lang.split("-")[0].lower()
  if style == "paper":
    return (functools.partial(paper_tokens, lang=lang),
            sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True),
            f"moses-tok({lang})+compound-split(##AT##)+multi-bleu")
  if style == "multi30k":
    return (functools.partial(multi30k_tokens, lang=lang),
            sacrebleu.BLEU(tokenize="none", force=True),
            f"moses-punct-norm+moses-tok({lang})+lowercase")
  return (lambda text: text, sacrebleu.BLEU(tokenize=sacrebleu_tokenizer(target_lang)),
          "detokenized")


def prepare(texts: Sequence[str], style: str, target_lang: str) -> list[str]:
  """Texts as the style's BLEU sees them."""
  transform, _, _ = preparation(style, target_lang)
  return [transform(text) for text in texts]
