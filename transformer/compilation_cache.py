"""JAX's persistent compilation cache for training runs, and a count of its hits.

A run restarted after preemption compiles the same train and eval steps again; with the cache in
the workdir (local or gs://) it loads them instead.
"""

from __future__ import annotations

import os

import jax
import ml_collections

_HITS = "/jax/compilation_cache/cache_hits"
_hits = 0


def _count(event: str, **kwargs) -> None:
  del kwargs
  global _hits
  if event == _HITS:
    _hits += 1


jax.monitoring.register_event_listener(_count)


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """Where compiled programs are cached: `config.train.compilation_cache_dir`, by default
  `WORKDIR/compilation_cache`; None when set to 'off'."""
  configured = config.train.get("compilation_cache_dir", "")
  if configured == "off":
    return None
  return configured or os.path.join(workdir, "compilation_cache")


def enable(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """Points JAX's persistent cache at `cache_dir` (every program cached, however quick)."""
  directory = cache_dir(config, workdir)
  if directory is None:
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def hits() -> int:
  """Programs loaded from the persistent cache so far in this process."""
  return _hits
