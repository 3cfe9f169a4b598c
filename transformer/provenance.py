"""Where a result came from: code commit, library versions, devices, seed.

Stored in every checkpoint's metadata and in `WORKDIR/provenance.json`, and copied into every
sweep results row, so that any number can be traced to the code and environment that made it.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from typing import Any

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "libtpu", "grain",
            "array-record", "tensorflow-datasets", "sentencepiece", "sacrebleu")


def _git(*args: str) -> str | None:
  try:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() if result.returncode == 0 else None


def code_version() -> dict[str, Any]:
  """The git commit of this checkout and whether tracked files differ from it.

  A copy without .git (a TPU worker set up from a tarball) reads `COMMIT` written at copy time.
  """
  commit = _git("rev-parse", "HEAD")
  if commit is not None:
    return {"commit": commit, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
  stamp = os.path.join(REPO, "COMMIT")
  if os.path.exists(stamp):
    with open(stamp, encoding="utf-8") as handle:
      commit, _, dirty = handle.read().strip().partition(" ")
    return {"commit": commit, "dirty": dirty == "dirty"}
  return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
  """Installed versions of the libraries that shape results (None: not installed)."""
  found = {}
  for package in PACKAGES:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def collect(seed: int) -> dict[str, Any]:
  """Commit, versions, devices and seed of this process's run."""
  devices = jax.devices()
  return {**code_version(), "versions": versions(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "process_count": jax.process_count(), "seed": seed}
