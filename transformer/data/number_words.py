"""The generated task: English number words -> German number words, 0..999,999.

"three hundred forty-two thousand one" -> "dreihundertzweiundvierzigtausendeins". German swaps units
and tens ("zweiundvierzig" is "two-and-forty") and writes the number as one word, so the model has
to learn alignment and local reordering. A sentence lists one to three numbers separated by commas
("seven, forty-two" -> "sieben, zweiundvierzig"), so that BLEU has n-grams to count. Made from a
seed by our own code; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

MAX_NUMBER = 999_999

_EN_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
             "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
             "seventeen", "eighteen", "nineteen"]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_DE_UNITS = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun",
             "zehn", "elf", "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn",
             "achtzehn", "neunzehn"]
_DE_TENS = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig",
            "neunzig"]


def _english_below_1000(n: int) -> list[str]:
  words = []
  if n >= 100:
    words += [_EN_UNITS[n // 100], "hundred"]
    n %= 100
  if n >= 20:
    words.append(_EN_TENS[n // 10] + (f"-{_EN_UNITS[n % 10]}" if n % 10 else ""))
  elif n > 0:
    words.append(_EN_UNITS[n])
  return words


def english(n: int) -> str:
  """American English words for 0 <= n <= 999,999, e.g. 'forty-two thousand one'."""
  _check_range(n)
  if n == 0:
    return "zero"
  words = []
  if n >= 1000:
    words += _english_below_1000(n // 1000) + ["thousand"]
  words += _english_below_1000(n % 1000)
  return " ".join(words)


def _german_below_100(n: int, final: bool) -> str:
  if n == 0:
    return ""
  if n == 1:
    return "eins" if final else "ein"  # "einhundert", "eintausend", but "hunderteins"
  if n < 20:
    return _DE_UNITS[n]
  units = n % 10
  if units == 0:
    return _DE_TENS[n // 10]
  return ("ein" if units == 1 else _DE_UNITS[units]) + "und" + _DE_TENS[n // 10]


def _german_below_1000(n: int, final: bool) -> str:
  hundreds = n // 100
  prefix = (_german_below_100(hundreds, final=False) + "hundert") if hundreds else ""
  return prefix + _german_below_100(n % 100, final)


def german(n: int) -> str:
  """German number word for 0 <= n <= 999,999, e.g. 'zweiundvierzigtausendeins'."""
  _check_range(n)
  if n == 0:
    return "null"
  thousands = n // 1000
  prefix = (_german_below_1000(thousands, final=False) + "tausend") if thousands else ""
  return prefix + _german_below_1000(n % 1000, final=True)


def _check_range(n: int) -> None:
  if not 0 <= n <= MAX_NUMBER:
    raise ValueError(f"number words are defined for 0..{MAX_NUMBER}, got {n}")


MAX_NUMBERS_PER_SENTENCE = 3


def sentence_pair(numbers: tuple[int, ...]) -> tuple[str, str]:
  """The English and German sentence listing `numbers`."""
  return (", ".join(english(n) for n in numbers), ", ".join(german(n) for n in numbers))


def sample_sentences(seed: int, sizes: dict[str, int]) -> dict[str, list[tuple[int, ...]]]:
  """Sentences of 1..3 numbers per split; no number appears in two splits."""
  pools = sample_numbers(seed, {name: size * MAX_NUMBERS_PER_SENTENCE
                                for name, size in sizes.items()})
  rng = np.random.default_rng(seed + 1)
  sentences = {}
  for name, size in sizes.items():
    counts = rng.integers(1, MAX_NUMBERS_PER_SENTENCE + 1, size=size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pool = pools[name]
    sentences[name] = [tuple(pool[start:start + count]) for start, count in zip(starts, counts)]
  return sentences


def sample_numbers(seed: int, sizes: dict[str, int]) -> dict[str, list[int]]:
  """Disjoint sets of numbers per split, drawn with as many short as long numbers.

  The number of digits (1..6) is drawn uniformly, then a number with that many digits, so small
  numbers are not swamped by the 900,000 six-digit ones. No number appears in two splits.
  """
  total = sum(sizes.values())
  if total > (MAX_NUMBER + 1) // 2:
    raise ValueError(f"at most {(MAX_NUMBER + 1) // 2} examples can be drawn, asked for {total}")
  rng = np.random.default_rng(seed)
  chosen: dict[int, None] = {}
  while len(chosen) < total:
    digits = rng.integers(1, 7, size=total)
    low = np.where(digits == 1, 0, 10 ** (digits - 1))
    for number in rng.integers(low, 10**digits):
      chosen.setdefault(int(number))
      if len(chosen) == total:
        break
  numbers = list(chosen)
  splits, start = {}, 0
  for name, size in sizes.items():
    splits[name] = numbers[start:start + size]
    start += size
  return splits
