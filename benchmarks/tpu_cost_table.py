"""The compiler-backed TPU time and cost table: wmt14_base / wmt14_big on Cloud TPU slices.

For each model and slice, the train step is compiled ahead of time for XLA:TPU (no TPU needed,
see transformer/aot.py) with each candidate layout (mesh and rematerialisation) at the paper's
batch of ~25k tokens per side; the layout with the best modeled MFU that fits is then compiled
with its decode step and becomes the table's row. Every figure is XLA's TPU cost model
(`optimal_seconds` corrected for unmodeled custom calls, transformer/hlo_cost.py), not a
measurement. Every JSON carries the commit, jax and libtpu versions and the config changes it
was compiled with; tests/test_cost_table.py recompiles the small `check` row and fails when the
current step no longer compiles to the committed figures. Resumable: finished compilations are
read back from the output directory.

    python -m benchmarks.tpu_cost_table table [--slices v4-8,v5litepod-8,v5p-8] [--models base,big]
        [--layouts dp,dp+remat]
    python -m benchmarks.tpu_cost_table before-after [--slices v4-8] [--models base,big]
        [--name before_after]
    python -m benchmarks.tpu_cost_table check

`before-after` compiles the train step with each of the step's memory options alone and all
of them, against the step without them, at the table row's layout, and draws
`before_after.png` beside its table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable


from transformer import aot

# No persistent compilation cache: an executable compiled for a topology without its devices
# cannot be loaded back ("PjRtCompiler must be constructed with a Client"), so it never helps.
aot.prepare_off_device_compilation()

import ml_collections  # noqa: E402  (after the off-device set-up above)

from benchmarks import step_options  # noqa: E402  (after the off-device set-up above)
from experiments.configs import wmt14_base, wmt14_big  # noqa: E402  (after the off-device set-up above)
from transformer import flops, provenance, steps, tpu_slices, workdir  # noqa: E402  (after the off-device set-up above)
from transformer.plotting import pyplot  # noqa: E402  (after the off-device set-up above)

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tpu_compile")


def check_config() -> ml_collections.ConfigDict:
  """The base config cut to one layer per stack and 8 rows: a row CI can compile in seconds."""
  config = wmt14_base.get_config()
  config.model.update(encoder_layers=1, decoder_layers=1)
  config.data.update(batch_size=8, eval_batch_size=8, max_eval_length=32)
  config.decode.extra_length = 8
  return config


MODELS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "base": wmt14_base.get_config, "big": wmt14_big.get_config, "check": check_config}
# (name, mesh, remat): pure data parallelism; parameters and Adam state sharded over every chip
# (FSDP); data parallelism with activations recomputed in the backward pass.
LAYOUTS = {"dp": (dict(data=-1, fsdp=1, tensor=1), "none"),
           "fsdp": (dict(data=1, fsdp=-1, tensor=1), "none"),
           "dp+remat": (dict(data=-1, fsdp=1, tensor=1), "dots")}
# The train step's memory options (issue #60) as dotted config changes: the step without them,
# each alone and all of them (as benchmarks/step_options.py times them on CPU), and the
# configs' own defaults.
VARIANTS = {name: {**{f"model.{key}": value for key, value in model.items()},
                   **{f"train.{key}": value for key, value in train.items()}}
            for name, (model, train) in step_options.VARIANTS.items()}
VARIANTS["config defaults"] = {}


def configured(model: str, layout: str, changes: dict[str, Any] | None = None
               ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """The experiment config with a layout and config changes, and the changes as recorded."""
  config = MODELS[model]()
  mesh, remat = LAYOUTS[layout]
  recorded = {**{f"mesh.{k}": v for k, v in mesh.items()}, "model.remat_policy": remat,
              **(changes or {})}
  for key, value in recorded.items():
    section, name = key.split(".")
    config[section][name] = value
  return config, recorded


def stamp(result: dict[str, Any], model: str, changes: dict[str, Any]) -> dict[str, Any]:
  """Adds what a row came from: model, config changes, commit and versions."""
  versions = provenance.versions()
  return {**result, "model": model, "config_changes": changes, **provenance.code_version(),
          "jax": versions["jax"], "libtpu": versions["libtpu"]}


def train_only(model: str, layout: str, accelerator: str, changes: dict[str, Any] | None = None
               ) -> dict[str, Any]:
  """Modeled figures of the train step alone (the decode step is compiled for the winner)."""
  config, recorded = configured(model, layout, changes)
  slice_ = tpu_slices.get_slice(accelerator)
  setup = steps.make_setup(config, devices=aot.slice_devices(slice_))
  step = aot.compile_or_oom(aot.compile_train_step, setup, config, slice_.chip)
  result = {"accelerator_type": accelerator, "layout": layout,
            "mesh": {k: int(v) for k, v in setup.mesh.shape.items()}, "train": step}
  if step["fits"]:
    result["modeled_mfu"] = flops.mfu(steps.model_flops_per_step(setup, config), 1,
                                      step["modeled_step_seconds"],
                                      slice_.chips * slice_.chip.peak_bf16_flops)
  return stamp(result, model, recorded)


def full_report(model: str, layout: str, accelerator: str) -> dict[str, Any]:
  """The train and decode steps' report (`--mode=compile`'s), stamped."""
  config, recorded = configured(model, layout)
  return stamp({**aot.compile_report(config, accelerator), "layout": layout}, model, recorded)


def cached(path: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """Reads `path` if present, else computes and writes it (the campaign resumes)."""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as handle:
      return json.load(handle)
  start = time.perf_counter()
  result = compute()
  result["compile_seconds"] = time.perf_counter() - start
  workdir.write_atomically(path, json.dumps(result, indent=2))
  return result


def best_layout(model: str, accelerator: str, layouts: list[str]) -> str:
  """The fitting layout with the highest modeled MFU."""
  scored = []
  for layout in layouts:
    path = os.path.join(OUTPUT, f"{model}_{accelerator}_{layout}.train.json")
    result = cached(path, lambda: train_only(model, layout, accelerator))
    print(f"  {model} {accelerator} {layout:9s} fits={result['train']['fits']} "
          f"MFU {result.get('modeled_mfu', 0):.1%}", flush=True)
    if result["train"]["fits"]:
      scored.append((result["modeled_mfu"], layout))
  if not scored:
    raise SystemExit(f"error: no candidate layout fits {model} on {accelerator}")
  return max(scored)[1]


def gb(value: float) -> str:
  return f"{value / 1e9:.1f} GB"


Column = tuple[str, Callable[[dict[str, Any]], str]]
TABLE_COLUMNS: list[Column] = [
    ("model", lambda r: r["model"]), ("slice", lambda r: r["accelerator_type"]),
    ("chips", lambda r: str(r["chips"])), ("layout", lambda r: r["layout"]),
    ("HBM/chip", lambda r: f"{r['train']['hbm_bytes_per_device'] / 2**30:.1f} GiB"),
    ("HBM traffic/chip", lambda r: gb(r["train"]["hbm_traffic_bytes_per_device"])),
    ("step (ms)", lambda r: f"{r['modeled_step_seconds'] * 1e3:.1f}"),
    ("bound (ms)", lambda r: f"{r['train']['roofline_seconds'] * 1e3:.1f}"),
    ("tokens/s", lambda r: f"{r['modeled_tokens_per_second']:,.0f}"),
    ("MFU", lambda r: f"{r['modeled_mfu']:.1%}"), ("steps", lambda r: f"{r['num_steps'] // 1000}k"),
    ("hours", lambda r: f"{r['modeled_train_hours']:.1f}"),
    ("on demand", lambda r: f"${r['modeled_cost_usd_on_demand']:,.0f}"),
    ("spot", lambda r: f"${r['modeled_cost_usd_spot']:,.0f}")]
BEFORE_AFTER_COLUMNS: list[Column] = [
    ("model", lambda r: r["model"]), ("slice", lambda r: r["accelerator_type"]),
    ("layout", lambda r: r["layout"]), ("variant", lambda r: r["variant"]),
    ("HBM/chip", lambda r: f"{r['train']['hbm_bytes_per_device'] / 2**30:.2f} GiB"),
    ("HBM traffic/chip", lambda r: gb(r["train"]["hbm_traffic_bytes_per_device"])),
    ("XLA bytes/chip", lambda r: gb(r["train"]["xla_bytes_accessed_per_device"])),
    ("step (ms)", lambda r: f"{r['train']['modeled_step_seconds'] * 1e3:.1f}"),
    ("MFU", lambda r: f"{r['modeled_mfu']:.1%}")]


def markdown(columns: list[Column], rows: list[dict[str, Any]]) -> str:
  """A markdown table: one column per (header, cell function)."""
  lines = ["| " + " | ".join(header for header, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
  return "\n".join(lines)


def plot_before_after(rows: list[dict[str, Any]], path: str) -> None:
  """Modeled step time and memory per variant, one panel pair per model and slice."""
  plt = pyplot()

  groups = sorted({(r["model"], r["accelerator_type"]) for r in rows})
  figure, axes = plt.subplots(len(groups), 2, figsize=(11, 3.2 * len(groups)), squeeze=False)
  for (model, accelerator), (time_axis, memory_axis) in zip(groups, axes):
    chosen = [r for r in rows if (r["model"], r["accelerator_type"]) == (model, accelerator)]
    names = [r["variant"] for r in chosen]
    time_axis.barh(names, [r["train"]["modeled_step_seconds"] * 1e3 for r in chosen])
    time_axis.set_xlabel("modeled train step (ms)")
    memory_axis.barh(names, [r["train"]["hbm_bytes_per_device"] / 2**30 for r in chosen])
    memory_axis.set_xlabel("memory per chip (GiB)")
    memory_axis.set_yticklabels([])
    time_axis.set_title(f"{model} on {accelerator} ({chosen[0]['layout']})", loc="left")
  figure.suptitle("Step options, XLA TPU cost model (corrected), not measured", fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  print(f"written: {path}")


def footer(rows: list[dict[str, Any]]) -> str:
  """What the figures are and where they came from."""
  first = rows[0]
  commit = first["commit"][:12] + (" (uncommitted changes)" if first["dirty"] else "")
  return (f"\n\n{aot.MODELED}; HBM traffic counted from the compiled program "
          f"(transformer/hlo_cost.py); bound = max(FLOPs / peak, traffic / bandwidth). "
          f"Commit {commit}, jax {first['jax']}, libtpu {first['libtpu']}; "
          f"{tpu_slices.PRICES_SOURCE}.\n")


def write(name: str, text: str) -> None:
  workdir.write_atomically(os.path.join(OUTPUT, name), text)
  print(text)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=("table", "before-after", "check"))
  parser.add_argument("--slices", default="v4-8,v5litepod-8,v5p-8")
  parser.add_argument("--models", default="base,big")
  parser.add_argument("--name", default="before_after",
                      help="before-after: the table's and the plot's file name (no extension)")
  parser.add_argument("--layouts", default="dp,dp+remat",
                      help=f"candidate layouts to compile, of {', '.join(LAYOUTS)}")
  args = parser.parse_args()
  layouts = args.layouts.split(",")
  unknown = sorted(set(layouts) - set(LAYOUTS))
  if unknown:
    parser.error(f"--layouts: unknown {', '.join(unknown)}; known: {', '.join(LAYOUTS)}")
  os.makedirs(OUTPUT, exist_ok=True)
  if args.command == "check":
    path = os.path.join(OUTPUT, "check_v4-8.json")
    print(json.dumps(cached(path, lambda: full_report("check", "dp", "v4-8")), indent=1))
    return
  rows = []
  for model in args.models.split(","):
    for accelerator in args.slices.split(","):
      layout = best_layout(model, accelerator, layouts)
      if args.command == "table":
        path = os.path.join(OUTPUT, f"{model}_{accelerator}.json")
        rows.append(cached(path, lambda: full_report(model, layout, accelerator)))
        continue
      for variant, changes in VARIANTS.items():
        slug = variant.replace(" ", "_").replace("=", "")
        path = os.path.join(OUTPUT, f"{model}_{accelerator}_{layout}_{slug}.train.json")
        result = cached(path, lambda: train_only(model, layout, accelerator, changes))
        rows.append({**result, "variant": variant})
        print(markdown(BEFORE_AFTER_COLUMNS, rows[-1:]).splitlines()[-1], flush=True)
  if args.command == "table":
    write("table.md", markdown(TABLE_COLUMNS, rows) + footer(rows))
  else:
    write(f"{args.name}.md", markdown(BEFORE_AFTER_COLUMNS, rows) + footer(rows))
    plot_before_after(rows, os.path.join(OUTPUT, f"{args.name}.png"))


if __name__ == "__main__":
  main()
