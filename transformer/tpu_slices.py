"""Cloud TPU slices: accelerator types, their topologies, chips, hosts, runtimes and prices.

One table serves ahead-of-time compilation (`aot.py`), the cost estimate and the launcher
(`launch/tpu.py`). Accelerator types are the names users give gcloud (`v4-8`, `v5litepod-8`, ...):
v4 and v5p count TensorCores (2 per chip, one "megacore" JAX device per chip), v5e and v6e count
chips (one device each).
"""

from __future__ import annotations

import dataclasses
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation's public specification and list prices (per chip)."""

  generation: str  # topology prefix: v4, v5e, v5p, v6e
  family: str  # accelerator-type prefix: v4, v5litepod, v5p, v6e
  peak_bf16_flops: float  # dense bf16 FLOP/s per chip
  hbm_bytes: int
  hbm_bytes_per_second: float
  megacore: bool  # two TensorCores presented as one device
  cores_per_chip: int  # what the accelerator-type number counts per chip
  chips_per_host: int  # chips per VM in multi-host slices
  single_host_chips: int  # the largest slice that is one VM
  runtime_version: str  # TPU VM software image for `gcloud ... create --version`
  on_demand_usd_per_chip_hour: float
  spot_usd_per_chip_hour: float


# Specifications: Cloud TPU system architecture pages (v4, v5e, v5p, v6e). Prices: Google's
# published us-central on-demand rates per chip-hour (cloud.google.com/tpu/pricing); spot rates
# are approximate and move (they may change daily). Recorded on PRICES_DATE from the published
# list, not re-read from the live page (this machine has no internet): check before you buy.
PRICES_DATE = "2026-11-25"
PRICES_SOURCE = (f"Cloud TPU list prices per chip-hour, us-central, as recorded {PRICES_DATE} "
                 "(not re-checked live; spot approximate): verify at cloud.google.com/tpu/pricing")
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "v4", 275e12, 32 * GIB, 1228e9, True, 2, 4, 4, "tpu-ubuntu2204-base",
               3.22, 0.97),
    "v5e": Chip("v5e", "v5litepod", 197e12, 16 * GIB, 819e9, False, 1, 4, 8,
                "v2-alpha-tpuv5-lite", 1.20, 0.48),
    "v5p": Chip("v5p", "v5p", 459e12, 95 * GIB, 2765e9, True, 2, 4, 4, "v2-alpha-tpuv5",
                4.20, 1.68),
    "v6e": Chip("v6e", "v6e", 918e12, 32 * GIB, 1640e9, False, 1, 4, 8, "v2-alpha-tpuv6e",
                2.70, 1.08),
}
FAMILY_TO_GENERATION = {chip.family: name for name, chip in CHIPS.items()}

# Physical chip grids per slice size (chips -> topology dimensions), from the Cloud TPU docs.
_GRIDS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8"}
_GRIDS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A Cloud TPU slice as JAX sees it."""

  accelerator_type: str  # v4-32
  topology_name: str  # v4:2x2x4 (for jax.experimental.topologies)
  chip: Chip
  chips: int
  hosts: int

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int] | None:
    """A single-host slice is one host of all its chips (libtpu's default is 2x2x1 per host)."""
    if self.hosts > 1:
      return None
    dims = [int(n) for n in self.topology_name.split(":")[1].split("x")]
    return tuple(dims + [1] * (3 - len(dims)))

  @property
  def chip_config_name(self) -> str | None:
    """`megacore` where one JAX device spans a chip's two TensorCores (v4, v5p)."""
    return "megacore" if self.chip.megacore else None


def _table() -> dict[str, Slice]:
  slices = {}
  for generation, chip in CHIPS.items():
    grids = _GRIDS_3D if chip.megacore else _GRIDS_2D
    for chips, grid in grids.items():
      name = f"{chip.family}-{chips * chip.cores_per_chip}"
      hosts = 1 if chips <= chip.single_host_chips else chips // chip.chips_per_host
      slices[name] = Slice(name, f"{generation}:{grid}", chip, chips, hosts)
  return slices


SLICES: dict[str, Slice] = _table()


def known_types() -> str:
  """The accelerator types we know, for error messages."""
  return ", ".join(SLICES)


def get_slice(accelerator_type: str) -> Slice:
  """The slice for a gcloud accelerator type; ValueError listing the known ones otherwise."""
  if accelerator_type not in SLICES:
    raise ValueError(f"--topology: unknown TPU accelerator type {accelerator_type!r}; known: "
                     f"{known_types()}")
  return SLICES[accelerator_type]


def generation_of(accelerator_type: str) -> Chip:
  """The chip of any well-formed accelerator type (also sizes not in the table)."""
  match = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-\d+", accelerator_type)
  if not match:
    raise ValueError(f"unknown TPU accelerator type {accelerator_type!r}")
  return CHIPS[FAMILY_TO_GENERATION[match.group(1)]]


def num_hosts(accelerator_type: str) -> int:
  """VMs in a slice (also for sizes outside the table)."""
  if accelerator_type in SLICES:
    return SLICES[accelerator_type].hosts
  chip = generation_of(accelerator_type)
  chips = int(accelerator_type.rsplit("-", 1)[1]) // chip.cores_per_chip
  return 1 if chips <= chip.single_host_chips else chips // chip.chips_per_host
