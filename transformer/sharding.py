"""Device mesh and logical-axis rules: data, FSDP and tensor parallelism as a config change.

The model names every parameter and activation axis (`vocab`, `embed`, `heads`, `kv`, `mlp`,
`batch`, `length`, `layers`); the rules below map them to the mesh axes `data`, `fsdp`, `tensor`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
import flax.linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Megatron-style tensor parallelism splits heads and the feed-forward hidden layer; FSDP shards
# parameters (and optimizer state) along d_model; the batch is split over data and fsdp. Flax
# leaves an axis unsharded when its mesh axis is already taken by another axis of the same array.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Resolves one `-1` entry to "the rest of the devices" and checks the product."""
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{name} must be a positive size or -1, got {size}")
  unknown = [name for name, size in sizes.items() if size == -1]
  if len(unknown) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {', '.join(unknown)}")
  known = int(np.prod([size for size in sizes.values() if size != -1]))
  if unknown:
    if num_devices % known:
      raise ValueError(f"config.mesh: {num_devices} devices cannot be split into "
                       f"data={data} fsdp={fsdp} tensor={tensor}")
    sizes[unknown[0]] = num_devices // known
  if int(np.prod(list(sizes.values()))) != num_devices:
    raise ValueError(f"config.mesh: data*fsdp*tensor = {data}*{fsdp}*{tensor} does not match "
                     f"the {num_devices} available devices")
  return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int, fsdp: int, tensor: int,
              devices: Sequence[jax.Device] | None = None, dcn_data: int = 1) -> Mesh:
  """A `Mesh` with axes (data, fsdp, tensor) over `devices` (default: all).

  The device order follows the physical topology (`mesh_utils.create_device_mesh`), so that the
  tensor and fsdp axes, which communicate most, sit on neighbouring chips. With `dcn_data` > 1
  (several TPU slices joined over the data-centre network) the data axis spans the slices
  (`create_hybrid_device_mesh`) and `data`, `fsdp`, `tensor` describe one slice.
  """
  devices = list(devices if devices is not None else jax.devices())
  if dcn_data < 1 or len(devices) % dcn_data:
    raise ValueError(f"config.mesh.dcn_data must be a positive divisor of the {len(devices)} "
                     f"devices, got {dcn_data}")
  shape = mesh_shape(data, fsdp, tensor, len(devices) // dcn_data)
  if dcn_data > 1:
    slices = {getattr(device, "slice_index", 0) for device in devices}
    if len(slices) != dcn_data:
      raise ValueError(f"config.mesh.dcn_data={dcn_data} but the devices come from "
                       f"{len(slices)} slice(s)")
    grid = mesh_utils.create_hybrid_device_mesh(shape, (dcn_data, 1, 1), devices,
                                                allow_split_physical_axes=True)
  else:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES)


def tree_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of (boxed, logically partitioned) arrays or shape structs."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split along their leading axis over the data and fsdp axes."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local part, sharded on the mesh."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in local_batch.items()}
