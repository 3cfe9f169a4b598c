"""The token ids every vocabulary here reserves (SentencePiece is trained with these)."""

from typing import Iterable

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # padding (also the decoder's start symbol), end, unknown


def until_eos(ids: Iterable[int]) -> list[int]:
  """The ids before the first EOS, padding (and the start symbol, the same id) dropped."""
  kept = []
  for token in map(int, ids):
    if token == EOS_ID:
      break
    if token != PAD_ID:
      kept.append(token)
  return kept
