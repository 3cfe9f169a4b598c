"""Decoding speed: greedy and beam 4, with and without the key/value cache, in one run.

    python benchmarks/decode_speed.py [--sentences 32] [--repeats 2]

A Multi30k-sized model (d_model 256, 3+3 layers, 8k vocabulary; randomly initialized, which does
not change the cost) translates sources of 14 tokens; with the paper's limit of input length +
50, every output is 64 tokens long (random weights almost never emit EOS early). Reports
sentences/s and generated tokens/s; the goal is the cache >= 5x faster at this length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformer import config as model_config  # noqa: E402
from transformer import inference  # noqa: E402
from transformer.data.tokenizer import EOS_ID  # noqa: E402
from transformer.model import Transformer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sentences", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  config = model_config.base(vocab_size=8000, d_model=256, num_heads=4, d_ff=1024,
                             encoder_layers=3, decoder_layers=3, max_len=128)
  model = Transformer(config)
  rng = np.random.RandomState(0)
  inputs = jnp.asarray(np.concatenate([rng.randint(3, 8000, (args.sentences, 13)),
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
