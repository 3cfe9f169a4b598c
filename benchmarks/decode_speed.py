"""Decoding speed: greedy and beam 4, with and without the key/value cache, in one run.

    python -m benchmarks.decode_speed [--sentences 32] [--repeats 2]

A Multi30k-sized model (d_model 256, 3+3 layers, 8k vocabulary; randomly initialized, which does
not change the cost) translates sources of 14 tokens; with the paper's limit of input length +
50, every output is 64 tokens long (random weights almost never emit EOS early). Reports
sentences/s and generated tokens/s; the goal is the cache >= 5x faster at this length. The
PyTorch peer (`torch_peer.py`, same sizes, no cache in `nn.TransformerDecoder`) decodes greedily
to the same length (`--skip_torch` without it).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn


from transformer import config as model_config
from transformer import inference
from transformer.data.tokenizer import EOS_ID
from transformer.model import Transformer

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VOCAB, MAX_LEN, EXTRA_LENGTH = 8000, 128, 50  # outputs: input length + 50 (Sec. 6.1)
SIZE = dict(d_model=256, heads=4, d_ff=1024, layers=3)


def generated_tokens(ids: np.ndarray) -> int:
  """Tokens up to and including EOS in the best hypotheses."""
  best = ids[:, 0]
  lengths = [int(np.argmax(row == EOS_ID)) + 1 if EOS_ID in row else len(row) for row in best]
  return int(sum(lengths))


def measure(model, params, inputs, options, repeats: int) -> dict[str, float]:
  """Best-of-`repeats` wall time after a compile run."""
  ids, _ = inference.translate_ids(model, params, inputs, options)
  ids.block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    ids, _ = inference.translate_ids(model, params, inputs, options)
    ids.block_until_ready()
    times.append(time.perf_counter() - start)
  seconds = min(times)
  tokens = generated_tokens(np.asarray(ids))
  return {"seconds": seconds, "sentences_per_sec": inputs.shape[0] / seconds,
          "tokens_per_sec": tokens / seconds, "mean_output_length": tokens / inputs.shape[0]}


def measure_torch_greedy(inputs: np.ndarray, repeats: int) -> dict[str, float]:
  """The PyTorch peer (same sizes) decoding greedily to the same output length."""
  import torch

  from benchmarks import torch_peer

  torch_peer.use_all_cores()
  torch.manual_seed(0)
  model = torch_peer.Peer(VOCAB, **SIZE, max_len=MAX_LEN).eval()
  source = torch.from_numpy(inputs.astype(np.int64))
  length = inputs.shape[1] + EXTRA_LENGTH
  torch_peer.greedy(model, source, length)  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch_peer.greedy(model, source, length)
    times.append(time.perf_counter() - start)
  seconds = min(times)
  return {"seconds": seconds, "sentences_per_sec": inputs.shape[0] / seconds,
          "tokens_per_sec": inputs.shape[0] * length / seconds, "mean_output_length": length}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sentences", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip_torch", action="store_true", help="without the PyTorch peer")
  args = parser.parse_args()
  config = model_config.base(vocab_size=VOCAB, d_model=SIZE["d_model"],
                             num_heads=SIZE["heads"], d_ff=SIZE["d_ff"],
                             encoder_layers=SIZE["layers"], decoder_layers=SIZE["layers"],
                             max_len=MAX_LEN)
  model = Transformer(config)
  rng = np.random.RandomState(0)
  inputs = jnp.asarray(np.concatenate([rng.randint(3, VOCAB, (args.sentences, 13)),
                                       np.full((args.sentences, 1), EOS_ID)], axis=1), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), inputs, inputs)["params"])
  rows = []
  for method, beams in (("greedy", 1), ("beam", 4)):
    for use_cache in (True, False):
      options = inference.DecodeOptions(method=method, beam_size=beams, use_cache=use_cache)
      result = measure(model, params, inputs, options, args.repeats)
      rows.append({"method": f"{method}" + (" 4" if beams == 4 else ""),
                   "cache": use_cache, **result})
  for method in ("greedy", "beam 4"):
    cached, uncached = [r for r in rows if r["method"] == method]
    cached["speedup_from_cache"] = uncached["seconds"] / cached["seconds"]
  if not args.skip_torch:
    rows.append({"method": "greedy (PyTorch peer)", "cache": False,
                 **measure_torch_greedy(np.asarray(inputs), args.repeats)})
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "decode_speed.json"), "w") as handle:
    json.dump({"machine": f"{os.cpu_count()} CPU cores", "sentences": args.sentences,
               "rows": rows}, handle, indent=2)
  print("| decoding | cache | sentences/s | tokens/s | mean length | cache speed-up |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    speedup = f"{r['speedup_from_cache']:.1f}x" if "speedup_from_cache" in r else ""
    print(f"| {r['method']} | {'yes' if r['cache'] else 'no'} | {r['sentences_per_sec']:.1f} | "
          f"{r['tokens_per_sec']:,.0f} | {r['mean_output_length']:.1f} | {speedup} |")


if __name__ == "__main__":
  main()
