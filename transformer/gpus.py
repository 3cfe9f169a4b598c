"""NVIDIA GPUs: their public specifications, compiling for them without one, and XLA's GPU flags.

`--mode=compile --topology=h200` (or `h100-8`, `a100-16`: GPUs in all, 8 per node) compiles the
train and decode steps for GPUs this machine does not have: the CUDA plugin (the `[gpu_compile]`
extra, no NVIDIA libraries needed) describes compile-only devices from an XLA GPU target
specification (`stream_executor.GpuTargetConfigProto`), written here from each GPU's public
specification. XLA reports the compiled program's memory per GPU exactly; it has no GPU cost model
without a GPU, so FLOPs come from the model formula and no step time is modeled.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from transformer import quiet_start
from transformer.tpu_slices import GIB

GPUS_PER_NODE = 8
# JAX preallocates this fraction of GPU memory; the trainer raises JAX's default 0.75 so that a
# step sized for the whole GPU fits (XLA_PYTHON_CLIENT_MEM_FRACTION; set it yourself to override).
MEMORY_FRACTION = 0.90
# The XLA GPU flags the trainer sets on GPUs unless XLA_FLAGS already names them: the
# latency-hiding scheduler overlaps collectives with compute (multi-GPU data parallelism and
# FSDP), and cuDNN's fused attention is enabled in XLA's fusion passes. Whether each one helps is
# measured by benchmarks/gpu_check.py (its `xla_flags` rounds).
RECOMMENDED_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_cudnn_fmha=true",
)
# The alternative set the GPU check measures beside the default: Triton GEMM fusions off (cuBLAS
# for every matmul) and command buffers off, as JAX-Toolbox and MaxText GPU recipes do.
ALTERNATIVE_XLA_FLAGS = RECOMMENDED_XLA_FLAGS + (
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_command_buffer=",
)


@dataclasses.dataclass(frozen=True)
class Gpu:
  """One NVIDIA data-centre GPU (SXM form factor) as its public specification sheet gives it."""

  name: str  # the --topology prefix: a100, h100, h200
  description: str  # what `device.device_kind` says on the real GPU
  peak_bf16_flops: float  # dense bf16 FLOP/s (without 2:4 sparsity)
  hbm_bytes: int
  hbm_bytes_per_second: float
  sm_count: int
  compute_capability: tuple[int, int]
  boost_clock_ghz: float
  l2_cache_bytes: int
  shared_memory_per_sm: int  # bytes
  shared_memory_per_block_optin: int  # bytes

  @property
  def usable_bytes(self) -> int:
    """Memory a JAX process may use: the preallocated fraction of the GPU's memory."""
    return int(self.hbm_bytes * MEMORY_FRACTION)


# NVIDIA A100 / H100 / H200 data sheets and the CUDA C++ Programming Guide (per-SM limits).
GPUS: dict[str, Gpu] = {
    "a100": Gpu("a100", "NVIDIA A100-SXM4-80GB", 312e12, 80 * GIB, 2039e9, 108, (8, 0), 1.41,
                40 * 2**20, 164 * 1024, 163 * 1024),
    "h100": Gpu("h100", "NVIDIA H100 80GB HBM3", 989e12, 80 * GIB, 3350e9, 132, (9, 0), 1.98,
                50 * 2**20, 228 * 1024, 227 * 1024),
    "h200": Gpu("h200", "NVIDIA H200", 989e12, 141 * 10**9, 4800e9, 132, (9, 0), 1.98,
                50 * 2**20, 228 * 1024, 227 * 1024),
}
_TOPOLOGY = re.compile(r"(?P<gpu>[a-z]\d+)(?:-(?P<count>\d+))?")


@dataclasses.dataclass(frozen=True)
class GpuCluster:
  """`count` GPUs of one kind, `GPUS_PER_NODE` per node (fewer on a single node)."""

  gpu: Gpu
  count: int

  @property
  def nodes(self) -> int:
    """Nodes (hosts) the GPUs sit in."""
    return max(1, -(-self.count // GPUS_PER_NODE))

  @property
  def gpus_per_node(self) -> int:
    """GPUs in each node."""
    return min(self.count, GPUS_PER_NODE)


def is_gpu_topology(name: str) -> bool:
  """Whether a --topology value names GPUs (a100, h100-8, ...) rather than a TPU slice."""
  match = _TOPOLOGY.fullmatch(name)
  return bool(match and match["gpu"] in GPUS)


def parse_topology(name: str) -> GpuCluster:
  """`h200` -> one H200; `h100-16` -> 16 H100s in two nodes. ValueError naming the known GPUs."""
  match = _TOPOLOGY.fullmatch(name)
  if not match or match["gpu"] not in GPUS:
    raise ValueError(f"--topology: unknown GPU {name!r}; known: {', '.join(GPUS)} (optionally "
                     "-N for N GPUs, 8 per node, e.g. h100-8)")
  count = int(match["count"] or 1)
  if count < 1 or (count > GPUS_PER_NODE and count % GPUS_PER_NODE):
    raise ValueError(f"--topology={name}: the GPU count must be 1-{GPUS_PER_NODE} or a multiple "
                     f"of {GPUS_PER_NODE} (whole nodes)")
  return GpuCluster(GPUS[match["gpu"]], count)


def target_config(gpu: Gpu) -> str:
  """The XLA GPU target specification (GpuTargetConfigProto text format) of `gpu`.

  Architecture limits common to these GPUs (threads, registers, grid sizes) come from the CUDA
  Programming Guide's compute-capability tables.
  """
  major, minor = gpu.compute_capability
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {gpu.sm_count}
  fpus_per_core: {64 if major == 8 else 128}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.hbm_bytes_per_second)}
  l2_cache_size: {gpu.l2_cache_bytes}
  clock_rate_ghz: {gpu.boost_clock_ghz}
  device_memory_size: {gpu.hbm_bytes}
  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{gpu.description}"
"""


def compile_only_devices(cluster: GpuCluster) -> list[Any]:
  """Compile-only devices of `cluster`, described by the CUDA plugin without a GPU."""
  from jax.experimental import topologies  # noqa: PLC0415

  if not quiet_start.cuda_plugin_installed():
    raise ValueError(f"--topology={cluster.gpu.name}: compiling for a GPU needs the CUDA plugin: "
                     "pip install -e '.[gpu_compile]' (or the [cuda12]/[cuda13] extra)")
  try:
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=target_config(cluster.gpu),
        topology=f"1x{cluster.nodes}x{cluster.gpus_per_node}")
  except Exception as error:  # jaxlib raises XlaRuntimeError/RuntimeError without a public type
    raise ValueError(f"--topology={cluster.gpu.name}: the CUDA plugin cannot describe "
                     f"{cluster.count} {cluster.gpu.description}: "
                     f"{str(error).splitlines()[0]}") from None
  return list(topology.devices)


def set_gpu_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
  """The trainer's GPU defaults, set in `environ` (os.environ) unless already set there.

  XLA_FLAGS gains each recommended flag whose name it does not already set; the memory fraction
  is set only when the variable is absent. Returns what was added. Call before JAX starts its
  GPU backend.
  """
  environ = os.environ if environ is None else environ
  added = {}
  present = {flag.split("=")[0] for flag in environ.get("XLA_FLAGS", "").split()}
  missing = [flag for flag in RECOMMENDED_XLA_FLAGS if flag.split("=")[0] not in present]
  if missing:
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", "")] + missing).strip()
    added["XLA_FLAGS"] = " ".join(missing)
  if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in environ:
    environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{MEMORY_FRACTION:.2f}"
    added["XLA_PYTHON_CLIENT_MEM_FRACTION"] = environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]
  return added
