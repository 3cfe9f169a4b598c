"""The PyTorch peer of the benchmarks: `torch.nn.TransformerEncoder`/`TransformerDecoder` stacks
with our sizes (post-LN, ReLU, dropout, embeddings shared by both sides and the output layer and
scaled by sqrt(d_model), sinusoidal positions). Needs the `[bench]` extra (CPU torch: see
benchmarks/README.md).
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn


class Peer(nn.Module):
  """A post-LN encoder-decoder Transformer built from torch's own layers."""

  def __init__(self, vocab_size: int, d_model: int, heads: int, d_ff: int, layers: int,
               max_len: int, dropout: float = 0.1):
    super().__init__()
    self.d_model = d_model
    self.embedding = nn.Embedding(vocab_size, d_model)
    nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
    position = torch.arange(max_len)[:, None]
    angle = position / 10000 ** (torch.arange(0, d_model, 2) / d_model)
    self.register_buffer(
        "encoding", torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(max_len, d_model))
    self.dropout = nn.Dropout(dropout)
    self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
        d_model, heads, d_ff, dropout, batch_first=True), layers, enable_nested_tensor=False)
    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(
        d_model, heads, d_ff, dropout, batch_first=True), layers)

  def embed(self, ids: torch.Tensor) -> torch.Tensor:
    """Scaled token embeddings plus positions, with dropout: `[B, L] -> [B, L, D]`."""
    return self.dropout(self.embedding(ids) * math.sqrt(self.d_model)
                        + self.encoding[:ids.shape[1]])

  def encode(self, source: torch.Tensor) -> torch.Tensor:
    """Encoder output `[B, S, D]`."""
    return self.encoder(self.embed(source))

  def decode(self, decoder_input: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Logits `[B, T, V]` for a (shifted) target prefix, causally masked."""
    causal = nn.Transformer.generate_square_subsequent_mask(decoder_input.shape[1])
    output = self.decoder(self.embed(decoder_input), memory, tgt_mask=causal, tgt_is_causal=True)
    return output @ self.embedding.weight.T

  def forward(self, source: torch.Tensor, decoder_input: torch.Tensor) -> torch.Tensor:
    return self.decode(decoder_input, self.encode(source))


def use_all_cores() -> None:
  """torch at its best on a CPU: one intra-op thread per core."""
  torch.set_num_threads(os.cpu_count() or 1)


@torch.inference_mode()
def greedy(model: Peer, source: torch.Tensor, length: int, start_id: int = 0) -> torch.Tensor:
  """`length` greedy tokens per sentence; `nn.TransformerDecoder` has no key/value cache, so
  each step re-runs the decoder over the prefix (as torch's own tutorials do)."""
  memory = model.encode(source)
  ids = torch.full((source.shape[0], 1), start_id, dtype=torch.long)
  for _ in range(length):
    next_ids = model.decode(ids, memory)[:, -1].argmax(-1, keepdim=True)
    ids = torch.cat([ids, next_ids], dim=1)
  return ids[:, 1:]
