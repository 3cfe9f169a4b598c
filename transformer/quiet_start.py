"""Quiet start-up on machines without the accelerator a plugin is for.

With the CUDA plugin installed (the `[cuda12]`/`[cuda13]` extras, or the `[gpu_compile]` wheels
that compile for a GPU on any machine), every JAX start-up on a machine without an NVIDIA driver
(a laptop, a login node, CI) prints XLA's `cudart_stub.cc: Could not find cuda drivers` lines, and
a traceback when JAX then tries the CUDA backend. `quiet_jax_start()` loads JAX with those lines
filtered out and, where the machine has no accelerator at all, makes CPU the default platform, so
that a one-line error stays one line. Nothing changes on a machine with a GPU or TPU, or when JAX
was imported before this package.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
import tempfile
from typing import Callable, Iterator

_CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")
# XLA's CUDA stubs log through absl before absl is initialised: each line comes with this notice.
_NOISE = ("cudart_stub.cc", "WARNING: All log messages before absl::InitializeLog() is called")


def has_nvidia_gpu() -> bool:
  """Whether this machine exposes an NVIDIA GPU (device nodes or the driver's /proc entry)."""
  return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*"))


def has_tpu() -> bool:
  """Whether this machine is a TPU VM (TPU device nodes)."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def cuda_plugin_installed() -> bool:
  """Whether a JAX CUDA plugin package is installed (imported or not)."""
  return any(importlib.util.find_spec(name) is not None for name in _CUDA_PLUGINS)


def is_noise(line: str) -> bool:
  """A start-up line of the CUDA stubs that says only "there is no GPU here"."""
  return any(marker in line for marker in _NOISE)


@contextlib.contextmanager
def filtered_native_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
  """Captures file descriptor 2 (C++ and Python writes alike) and replays the lines not dropped."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode("utf-8", errors="replace")
      kept = "".join(line for line in text.splitlines(keepends=True) if not drop(line))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


def quiet_jax_start() -> None:
  """Imports JAX and registers its plugins without the no-GPU noise (see the module docstring)."""
  if "jax" in sys.modules or has_nvidia_gpu() or not cuda_plugin_installed():
    return
  if not has_tpu():
    # Only the CPU can run here; naming it skips the CUDA plugin's version check and traceback.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  with filtered_native_stderr(is_noise):
    import jax  # noqa: F401, PLC0415  (loads the plugin's CUDA stubs)
    from jax._src import xla_bridge  # noqa: PLC0415

    # Plugin discovery loads the PJRT library (more stub lines); JAX would do it at the first
    # backend use, outside this filter. It registers plugins only: no backend starts here, so
    # jax.distributed.initialize() and platform choices made later still apply.
    discover = getattr(xla_bridge, "_discover_and_register_pjrt_plugins", None)
    if discover is not None:
      discover()
