"""Ahead-of-time compilation of the train and decode steps, for this host, a TPU slice or GPUs.

`--mode=compile --topology=v4-32` needs no TPU: with the `libtpu` package installed,
`jax.experimental.topologies` describes the slice's devices, and the very train step that
training runs (same function, logical-axis rules, shardings, donated state) is lowered over a mesh
of them and compiled by XLA:TPU. The compiled program reports its per-device memory and XLA's cost
model (FLOPs, `optimal_seconds`), corrected where it is known to be wrong (`hlo_cost.py`: the
-1 s per unmodeled custom call, and HBM bytes counted from the program's memory spaces); the
modeled figures derived from them are estimates of the TPU cost model, not measurements.
`--topology=h100-8` (any GPU of `gpus.py`) does the same for NVIDIA GPUs through the CUDA
plugin: memory per GPU is exact, FLOPs come from the model formula (XLA has no GPU cost model
without a GPU) and no time is modeled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from transformer import (flops, gpus, hlo_cost, inference, quiet_start, sharding, steps,
                         tpu_slices, training)
from transformer import workdir as workdir_lib
from transformer.tpu_slices import GIB, Slice

MODELED = ("XLA TPU cost model (optimal_seconds, corrected for unmodeled custom calls), "
           "not measured")
GPU_NOTE = ("GPU: memory from the compiled program (exact); FLOPs from the model formula (XLA has "
            "no GPU cost model without a GPU); no time is modeled: GPU times are measured "
            "(benchmarks/gpu_check.py)")


class DoesNotFit(ValueError):
  """A compiled step needs more device memory than the chip has."""


def prepare_off_device_compilation() -> None:
  """Compile for a TPU or GPU on a machine without one: CPU as the only runtime platform (libtpu
  and the CUDA plugin are only compilers here; `transformer/__init__.py` keeps them quiet). Call
  before anything initialises JAX's backends."""
  jax.config.update("jax_platforms", "cpu")


# What libtpu reads at start-up on a machine without TPU chips: no metadata-server query, a
# nominal local slice (the topology to compile for is passed to it explicitly).
OFF_TPU_ENVIRONMENT = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v4-8",
                       "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0",
                       "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


@contextlib.contextmanager
def tpu_compile_environment() -> Iterator[None]:
  """Sets `OFF_TPU_ENVIRONMENT` (values already set win) where there are no TPU chips, for
  libtpu's start-up, and restores the environment afterwards."""
  if quiet_start.has_tpu():
    yield
    return
  saved = {key: os.environ.get(key) for key in OFF_TPU_ENVIRONMENT}
  for key, value in OFF_TPU_ENVIRONMENT.items():
    os.environ.setdefault(key, value)
  try:
    yield
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


def slice_devices(slice_: Slice, num_slices: int = 1) -> list[Any]:
  """The devices of a TPU slice (or `num_slices` slices), described without a TPU."""
  from jax.experimental import topologies  # noqa: PLC0415  (needs libtpu only here)

  if importlib.util.find_spec("libtpu") is None:
    raise ValueError(f"--topology={slice_.accelerator_type}: compiling for a TPU needs the "
                     "`libtpu` package: pip install -e '.[tpu]'")
  options: dict[str, Any] = {"num_slices": num_slices}
  if slice_.chip_config_name:
    options["chip_config_name"] = slice_.chip_config_name
  if slice_.chips_per_host_bounds:
    options["chips_per_host_bounds"] = slice_.chips_per_host_bounds
  try:
    with tpu_compile_environment():
      topology = topologies.get_topology_desc(platform="tpu",
                                              topology_name=slice_.topology_name, **options)
  except Exception as error:  # jaxlib raises XlaRuntimeError/RuntimeError without a public type
    raise ValueError(f"--topology={slice_.accelerator_type}: libtpu cannot describe "
                     f"{slice_.topology_name}: {str(error).splitlines()[0]}") from None
  return list(topology.devices)


def hbm_bytes(memory: Any) -> int:
  """Per-device bytes a compiled program needs: arguments + outputs + temporaries - aliased."""
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes +
             memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def _cost(compiled: Any) -> dict[str, float]:
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older jaxlibs return one dict per program
    cost = cost[0] if cost else {}
  return {key: float(cost.get(key, 0.0)) for key in ("flops", "bytes accessed",
                                                     "optimal_seconds")}


def modeled_seconds(optimal_seconds: float, program: hlo_cost.Program) -> float:
  """The one step-time model: XLA's `optimal_seconds` with the -1 s of every unmodeled custom
  call added back (`hlo_cost.corrected_optimal_seconds`)."""
  seconds = hlo_cost.corrected_optimal_seconds(optimal_seconds, program)
  if seconds <= 0:
    raise ValueError(f"XLA's cost model gave {optimal_seconds:.4g} s for this step, "
                     f"{seconds:.4g} s after correcting for unmodeled custom calls: no estimate "
                     f"(custom calls: {', '.join(hlo_cost.custom_call_targets(program))}; "
                     "transformer/hlo_cost.py lists the unmodeled ones)")
  return seconds


def roofline_seconds(flops_per_device: float, hbm_bytes_per_device: float,
                     chip: tpu_slices.Chip) -> float:
  """A lower bound on the step: the larger of FLOPs / bf16 peak and HBM bytes / bandwidth."""
  return max(flops_per_device / chip.peak_bf16_flops,
             hbm_bytes_per_device / chip.hbm_bytes_per_second)


def _abstract(shape: Sequence[int], dtype: Any, sharding_: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding_)


def compile_train_step(setup: steps.Setup, config: ml_collections.ConfigDict) -> Any:
  """The training step compiled for `setup.mesh` at the configured batch shape."""
  data = config.data
  batch_sharding = sharding.batch_sharding(setup.mesh)
  batch = jax.tree.map(lambda x: _abstract((data.batch_size,) + x.shape[1:], x.dtype,
                                           batch_sharding),
                       training.dummy_batch(1, data.packed_length, data.packed_inputs_length))
  return steps.compiled_train_step(setup, config).lower(setup.abstract_state, batch).compile()


def compile_decode_step(setup: steps.Setup, config: ml_collections.ConfigDict) -> Any:
  """The configured decoding (beam search by default) of one evaluation batch, compiled."""
  inputs = _abstract((config.data.eval_batch_size, config.data.max_eval_length), np.int32,
                     sharding.batch_sharding(setup.mesh))
  options = inference.DecodeOptions.from_config(config.decode)
  return inference.translate_ids.lower(setup.model, setup.abstract_state.params, inputs,
                                       options).compile()


def _step_report(compiled: Any, num_devices: int, chip: tpu_slices.Chip | gpus.Gpu | None
                 ) -> dict[str, Any]:
  memory = compiled.memory_analysis()
  cost = _cost(compiled)
  report: dict[str, Any] = {
      "hbm_bytes_per_device": hbm_bytes(memory) if memory is not None else None,
      "flops_per_device": cost["flops"] or None,  # None: no cost model (deviceless GPU)
      "flops_per_step": cost["flops"] * num_devices or None,
  }
  if isinstance(chip, gpus.Gpu):
    report.update(hbm_capacity_bytes=chip.usable_bytes,
                  fits=report["hbm_bytes_per_device"] <= chip.usable_bytes)
  elif chip is not None:
    program = hlo_cost.parse(compiled.as_text())
    traffic = hlo_cost.hbm_bytes(program)
    report.update(hbm_capacity_bytes=chip.hbm_bytes,
                  fits=report["hbm_bytes_per_device"] <= chip.hbm_bytes,
                  hbm_traffic_bytes_per_device=traffic,
                  xla_bytes_accessed_per_device=cost["bytes accessed"],
                  xla_optimal_seconds=cost["optimal_seconds"],
                  unmodeled_custom_calls=hlo_cost.unmodeled_custom_calls(program),
                  # XLA counts each loop body once: its FLOPs and time undercount these.
                  while_loops=hlo_cost.while_loops(program),
                  modeled_step_seconds=modeled_seconds(cost["optimal_seconds"], program),
                  roofline_seconds=roofline_seconds(cost["flops"], traffic, chip))
  return report


_OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED: Ran out of memory.*?\(([\d.]+)([KMGT])\)"
                            r".*?\(([\d.]+)([KMGT])\)")


def compile_or_oom(compile_step: Any, setup: steps.Setup, config: ml_collections.ConfigDict,
                    chip: tpu_slices.Chip | gpus.Gpu | None) -> dict[str, Any]:
  """The step's report, or `fits: False` with XLA's figures when XLA:TPU runs out of HBM.

  XLA:TPU refuses to compile a program whose temporaries exceed the chip's HBM, so the sizes come
  from its message (`required (63.48G) exceeds available HBM (15.75G)`).
  """
  try:
    return _step_report(compile_step(setup, config), setup.mesh.size, chip)
  except jax.errors.JaxRuntimeError as error:
    found = _OUT_OF_MEMORY.search(str(error).replace("\n", " "))
    if chip is None or not found:
      raise
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return {"fits": False, "hbm_bytes_per_device": int(float(found[1]) * scale[found[2]]),
            "hbm_capacity_bytes": int(float(found[3]) * scale[found[4]]),
            "xla_error": str(error).splitlines()[0]}


@dataclasses.dataclass(frozen=True)
class Target:
  """What to compile for: devices, and the figures the report gives about them."""

  name: str  # the --topology value, or "host (cpu)"
  devices: list[Any]
  topology: str | None  # v4:2x2x4, 1x2x8 (slices x nodes x GPUs), or None for this host
  chips: int
  hosts: int
  chip: tpu_slices.Chip | gpus.Gpu | None  # None: this host's devices (no capacity known)


def compile_target(accelerator_type: str | None, num_slices: int = 1) -> Target:
  """The devices of a TPU slice, a GPU cluster (`h100-8`) or, for None, this host."""
  if accelerator_type is None:
    devices = jax.devices()
    return Target(f"host ({devices[0].platform})", devices, None, len(devices),
                  jax.process_count(), None)
  if gpus.is_gpu_topology(accelerator_type):
    cluster = gpus.parse_topology(accelerator_type)
    return Target(accelerator_type, gpus.compile_only_devices(cluster),
                  f"1x{cluster.nodes}x{cluster.gpus_per_node}", cluster.count, cluster.nodes,
                  cluster.gpu)
  slice_ = tpu_slices.get_slice(accelerator_type)
  return Target(accelerator_type, slice_devices(slice_, num_slices), slice_.topology_name,
                slice_.chips * num_slices, slice_.hosts * num_slices, slice_.chip)


def compile_report(config: ml_collections.ConfigDict, accelerator_type: str | None = None
                   ) -> dict[str, Any]:
  """Compiles the train and decode steps (for a TPU slice, GPUs, or this host's devices).

  Returns the figures `--mode=compile` prints and writes; for a TPU slice they include the
  modeled step time, throughput, MFU and the time and cost of `config.train.num_steps`.
  """
  target = compile_target(accelerator_type, config.mesh.get("dcn_data", 1))
  devices = target.devices
  kernel_note = None
  if isinstance(target.chip, gpus.Gpu) and config.model.attention_kernel == "cudnn":
    # cuDNN custom calls compile only with a GPU present; the fused XLA kernel's memory is an
    # upper bound for cuDNN's flash attention, which never holds the [B, H, L, L] matrices.
    config = config.copy_and_resolve_references()
    config.model.attention_kernel = "jax"
    kernel_note = ("attention compiled as 'jax' (cuDNN's kernel compiles only on a GPU): memory "
                   "is an upper bound for 'cudnn'")
  setup = steps.make_setup(config, devices=devices)
  model_config = setup.model.config
  data = config.data
  source_length = data.packed_inputs_length or data.packed_length
  train = compile_or_oom(compile_train_step, setup, config, target.chip)
  decode = compile_or_oom(compile_decode_step, setup, config, target.chip)
  model_flops = flops.train_step_flops(model_config, data.batch_size, source_length,
                                       data.packed_length)
  report: dict[str, Any] = {
      "accelerator_type": target.name,
      "topology": target.topology,
      "slices": config.mesh.get("dcn_data", 1),
      "chips": target.chips,
      "hosts": target.hosts,
      "devices": len(devices),
      "device_kind": devices[0].device_kind,
      "mesh": {name: int(size) for name, size in setup.mesh.shape.items()},
      "parameters": int(sum(np.prod(x.shape) for x in
                            jax.tree.leaves(setup.abstract_state.params))),
      "dtype": model_config.dtype,
      "attention_kernel": model_config.attention_kernel,
      "remat_policy": model_config.remat_policy,
      "rows_per_step": data.batch_size,
      "tokens_per_step": data.batch_size * (source_length + data.packed_length),
      "model_flops_per_step": model_flops,
      # The train step's figures again at the top level: what "does it fit" is about.
      "hbm_bytes_per_device": train["hbm_bytes_per_device"],
      "hbm_capacity_bytes": train.get("hbm_capacity_bytes"),
      "flops_per_step": train.get("flops_per_step"),
      "train": train,
      "decode": {**decode, "sentences": data.eval_batch_size,
                 "max_source_length": data.max_eval_length,
                 "method": config.decode.method, "beam_size": config.decode.beam_size},
  }
  fits = bool(train.get("fits", True) and decode.get("fits", True))
  if isinstance(target.chip, gpus.Gpu):
    note = GPU_NOTE if kernel_note is None else f"{GPU_NOTE}; {kernel_note}"
    report.update(fits=fits, note=note, peak_bf16_flops_per_gpu=target.chip.peak_bf16_flops,
                  memory_fraction=gpus.MEMORY_FRACTION)
  elif target.chip is not None and fits:
    report.update(_modeled_run(report, config, target.chip))
  elif target.chip is not None:
    report.update(fits=False, modeled=MODELED)
  return report


def _modeled_run(report: dict[str, Any], config: ml_collections.ConfigDict,
                 chip: tpu_slices.Chip) -> dict[str, Any]:
  """Throughput, MFU, time and dollars of the configured run under the TPU cost model."""
  seconds = report["train"]["modeled_step_seconds"]
  chips = report["chips"]
  hours = config.train.num_steps * seconds / 3600
  return {
      "modeled": MODELED,
      "peak_bf16_flops_per_chip": chip.peak_bf16_flops,
      "modeled_step_seconds": seconds,
      "roofline_step_seconds": report["train"]["roofline_seconds"],
      "modeled_tokens_per_second": report["tokens_per_step"] / seconds,
      "modeled_mfu": flops.mfu(report["model_flops_per_step"], 1, seconds,
                               chip.peak_bf16_flops * chips),
      "num_steps": config.train.num_steps,
      "modeled_train_hours": hours,
      "modeled_cost_usd_on_demand": hours * chips * chip.on_demand_usd_per_chip_hour,
      "modeled_cost_usd_spot": hours * chips * chip.spot_usd_per_chip_hour,
      "usd_per_chip_hour": {"on_demand": chip.on_demand_usd_per_chip_hour,
                            "spot": chip.spot_usd_per_chip_hour},
      "prices": tpu_slices.PRICES_SOURCE,
      "fits": bool(report["train"]["fits"] and report["decode"]["fits"]),
  }


def format_report(report: dict[str, Any]) -> str:
  """The human-readable table of a compile report."""
  gib = lambda n: "n/a" if n is None else f"{n / GIB:.2f} GiB"
  train, decode = report["train"], report["decode"]
  if not report.get("fits", True):
    return "\n".join(
        [f"{report['accelerator_type']} ({report['topology']}): DOES NOT FIT"] +
        [f"{step} step: needs {gib(report[step]['hbm_bytes_per_device'])} per device of "
         f"{gib(report[step]['hbm_capacity_bytes'])}" for step in ("train", "decode")
         if not report[step]["fits"]])
  lines = [
      f"{report['accelerator_type']}" + (f" ({report['topology']}, {report['chips']} "
                                         f"{'GPUs' if 'note' in report else 'chips'}, "
                                         f"{report['hosts']} host(s))" if report["topology"]
                                         else f": {report['devices']} device(s)"),
      f"mesh {report['mesh']}; {report['parameters']:,d} parameters; {report['dtype']}; "
      f"attention {report['attention_kernel']}; remat {report['remat_policy']}",
      f"batch: {report['rows_per_step']} rows, {report['tokens_per_step']:,d} tokens per step "
      "(source + target)",
      f"{'':28s}{'train step':>16s}{'decode step':>16s}",
      f"{'memory per device':28s}{gib(train['hbm_bytes_per_device']):>16s}"
      f"{gib(decode['hbm_bytes_per_device']):>16s}",
      f"{'XLA FLOPs per step (global)':28s}{flops_text(train['flops_per_step']):>16s}"
      f"{flops_text(decode['flops_per_step']):>16s}",
      f"{'model FLOPs per step':28s}{report['model_flops_per_step']:>16.4g}{'':>16s}",
  ]
  if "hbm_capacity_bytes" in train:
    lines[4] += f"  (of {gib(train['hbm_capacity_bytes'])}: " + \
        ("fits)" if report["fits"] else "DOES NOT FIT)")
  if "note" in report:
    lines.append(f"({report['note']})")
  if "modeled_mfu" in report:
    lines += [
        f"{'step time':28s}{train['modeled_step_seconds'] * 1e3:>13.2f} ms"
        f"{decode['modeled_step_seconds'] * 1e3:>13.2f} ms",
        f"{'HBM traffic per device':28s}{train['hbm_traffic_bytes_per_device'] / 1e9:>13.2f} GB"
        f"{decode['hbm_traffic_bytes_per_device'] / 1e9:>13.2f} GB",
        f"{'roofline (lower bound)':28s}{train['roofline_seconds'] * 1e3:>13.2f} ms"
        f"{decode['roofline_seconds'] * 1e3:>13.2f} ms",
        f"modeled: {report['modeled_tokens_per_second']:,.0f} tokens/s, MFU "
        f"{report['modeled_mfu']:.1%}; {report['num_steps']:,d} steps in "
        f"{report['modeled_train_hours']:.1f} h = ${report['modeled_cost_usd_on_demand']:,.0f} "
        f"on demand, ${report['modeled_cost_usd_spot']:,.0f} spot",
        f"({report['modeled']}; MFU = model FLOPs / time / bf16 peak; {report['prices']})",
    ]
    for step in ("train", "decode"):
      trips = ", ".join(str(n or "unknown") for n in report[step]["while_loops"])
      if trips:
        lines.append(f"(the {step} step is a loop of {trips} iterations at most: its HBM traffic "
                     "and bound count every iteration, XLA's FLOPs and time count one)")
  return "\n".join(lines)


def flops_text(value: float | None) -> str:
  """A FLOP count for the table; n/a where XLA gave none."""
  return "n/a" if value is None else f"{value:.4g}"


def check_fits(report: dict[str, Any]) -> None:
  """Raises DoesNotFit naming the needed and available memory and what to change."""
  for step in ("train", "decode"):
    figures = report[step]
    if figures.get("fits", True):
      continue
    advice = ("lower config.data.batch_size, raise config.mesh.fsdp or set "
              "config.model.remat_policy=full" if step == "train" else
              "lower config.data.eval_batch_size or config.decode.beam_size")
    raise DoesNotFit(f"{report['accelerator_type']}: the {step} step needs "
                     f"{figures['hbm_bytes_per_device'] / GIB:.2f} GiB per device but a "
                     f"{report['device_kind']} has {figures['hbm_capacity_bytes'] / GIB:.0f} GiB: "
                     f"{advice}")


def write_report(report: dict[str, Any], workdir: str, name: str) -> str:
  """Writes `WORKDIR/compile/NAME.json` atomically; returns its path."""
  directory = workdir_lib.compile_reports(workdir)
  epath.Path(directory).mkdir(parents=True, exist_ok=True)
  return workdir_lib.write_atomically(os.path.join(directory, f"{name}.json"),
                                      json.dumps(report, indent=2) + "\n")


def compile_mode(config: ml_collections.ConfigDict, workdir: str, accelerator_type: str | None
                 ) -> str:
  """`--mode=compile`: compile, write the JSON, return the table; DoesNotFit after writing."""
  report = compile_report(config, accelerator_type)
  path = write_report(report, workdir, accelerator_type or "host")
  check_fits(report)
  return f"{format_report(report)}\nwritten: {path}"
