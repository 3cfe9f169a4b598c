"""The compiler-backed TPU time and cost table: wmt14_base / wmt14_big on Cloud TPU slices.

For each model and slice, the train step is compiled ahead of time for XLA:TPU (no TPU needed,
see transformer/aot.py) with each candidate layout (mesh and rematerialisation) at the paper's
batch of ~25k tokens per side; the layout with the best modeled MFU that fits is then compiled
with its decode step and becomes the table's row. Every figure is XLA's TPU cost model, not a
measurement. Resumable: finished compilations are read back from the output directory.

    python benchmarks/tpu_cost_table.py [--slices v4-8,v4-32,v5litepod-8,v5p-8] [--models base,big]
        [--layouts dp,fsdp,dp+remat]

Two processes with different --slices share the work on two cores; a last run with no flags
reads every compilation back and writes the whole table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformer import aot  # noqa: E402

aot.prepare_off_device_compilation()
# The winner's train step is compiled again with its decode step: the second time from the cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join("runs", "tpu_compile_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import ml_collections  # noqa: E402

from experiments.configs import wmt14_base, wmt14_big  # noqa: E402
from transformer import flops, steps, tpu_slices  # noqa: E402

MODELS = {"base": wmt14_base.get_config, "big": wmt14_big.get_config}
# (name, mesh, remat): pure data parallelism; parameters and Adam state sharded over every chip
# (FSDP); data parallelism with activations recomputed in the backward pass.
LAYOUTS = (("dp", dict(data=-1, fsdp=1, tensor=1), "none"),
           ("fsdp", dict(data=1, fsdp=-1, tensor=1), "none"),
           ("dp+remat", dict(data=-1, fsdp=1, tensor=1), "dots"))
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tpu_compile")


def configured(model: str, layout: tuple) -> ml_collections.ConfigDict:
  """The experiment config with a candidate layout."""
  config = MODELS[model]()
  _, mesh, remat = layout
  config.mesh.update(mesh)
  config.model.remat_policy = remat
  return config


def train_only(config: ml_collections.ConfigDict, accelerator: str) -> dict:
  """Modeled figures of the train step alone (the decode step is compiled for the winner)."""
  slice_ = tpu_slices.get_slice(accelerator)
  setup = steps.make_setup(config, devices=aot.slice_devices(slice_))
  step = aot.compile_or_oom(aot.compile_train_step, setup, config, slice_.chip)
  result = {"mesh": {k: int(v) for k, v in setup.mesh.shape.items()}, "train": step}
  if step["fits"]:
    result["modeled_mfu"] = flops.mfu(steps.model_flops_per_step(setup, config), 1,
                                      step["modeled_step_seconds"],
                                      slice_.chips * slice_.chip.peak_bf16_flops)
  return result


def cached(path: str, compute) -> dict:
  """Reads `path` if present, else computes and writes it (the campaign resumes)."""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as handle:
      return json.load(handle)
  start = time.perf_counter()
  result = compute()
  result["compile_seconds"] = time.perf_counter() - start
  with open(path + ".tmp", "w", encoding="utf-8") as handle:
    json.dump(result, handle, indent=2)
  os.replace(path + ".tmp", path)
  return result


def best_layout(model: str, accelerator: str, layouts: tuple) -> tuple:
  """The fitting layout with the highest modeled MFU."""
  scored = []
  for layout in layouts:
    path = os.path.join(OUTPUT, f"{model}_{accelerator}_{layout[0]}.train.json")
    result = cached(path, lambda: train_only(configured(model, layout), accelerator))
    print(f"  {model} {accelerator} {layout[0]:9s} fits={result['train']['fits']} "
          f"MFU {result.get('modeled_mfu', 0):.1%}", flush=True)
    if result["train"]["fits"]:
      scored.append((result["modeled_mfu"], layout))
  if not scored:
    raise SystemExit(f"error: no candidate layout fits {model} on {accelerator}")
  return max(scored, key=lambda item: item[0])[1]


def table(rows: list[dict]) -> str:
  """The markdown cost table."""
  lines = ["| model | slice | chips | layout | HBM/chip | step (ms) | source | tokens/s | MFU | "
           "steps | hours | on demand | spot |", "|" + "---|" * 13]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['accelerator_type']} | {r['chips']} | {r['layout']} | "
        f"{r['train']['hbm_bytes_per_device'] / 2**30:.1f} GiB | "
        f"{r['modeled_step_seconds'] * 1e3:.1f} | {r['modeled_step_seconds_source']} | "
        f"{r['modeled_tokens_per_second']:,.0f} | {r['modeled_mfu']:.1%} | "
        f"{r['num_steps'] // 1000}k | {r['modeled_train_hours']:.1f} | "
        f"${r['modeled_cost_usd_on_demand']:,.0f} | ${r['modeled_cost_usd_spot']:,.0f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--slices", default="v4-8,v4-32,v5litepod-8,v5p-8")
  parser.add_argument("--models", default="base,big")
  parser.add_argument("--layouts", default=",".join(name for name, _, _ in LAYOUTS),
                      help="candidate layouts to compile (names from LAYOUTS)")
  args = parser.parse_args()
  layouts = tuple(layout for layout in LAYOUTS if layout[0] in args.layouts.split(","))
  os.makedirs(OUTPUT, exist_ok=True)
  rows = []
  for model in args.models.split(","):
    for accelerator in args.slices.split(","):
      layout = best_layout(model, accelerator, layouts)
      path = os.path.join(OUTPUT, f"{model}_{accelerator}.json")
      report = cached(path, lambda: aot.compile_report(configured(model, layout), accelerator))
      rows.append({**report, "model": model, "layout": layout[0]})
      print(table(rows[-1:]).splitlines()[-1], flush=True)
  text = table(rows)
  with open(os.path.join(OUTPUT, "table.md"), "w", encoding="utf-8") as handle:
    handle.write(text + f"\n\nXLA TPU cost model, not measured; jax {jax.__version__}; "
                 f"{tpu_slices.PRICES_SOURCE}.\n")
  print(text)


if __name__ == "__main__":
  main()
