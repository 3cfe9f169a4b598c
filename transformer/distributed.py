"""Multi-host start-up: `jax.distributed.initialize` that fails fast with a clear message."""

from __future__ import annotations

import os
import sys
import threading

import jax


class StartupError(RuntimeError):
  """A multi-host run could not start (missing flags or processes)."""


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, timeout_seconds: int) -> None:
  """Joins the other processes; on TPU VMs all arguments may be None (automatic).

  Raises StartupError naming the flags to fix, or the processes that never joined, instead of
  hanging.
  """
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise StartupError("--coordinator_address needs --num_processes and --process_id")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise StartupError(f"--process_id must be in [0, {num_processes}), got {process_id}")
  # CPU processes need a collectives backend of their own; harmless on TPU and GPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  message = (f"process {process_id} could not join {num_processes} processes at "
             f"{coordinator_address} within {timeout_seconds}s: a process is missing or the "
             "coordinator is unreachable (check that every worker runs the same command)")
  # JAX's coordination service aborts the process with a C++ stack trace when the deadline
  # passes; this watchdog says what is wrong first and exits cleanly.
  watchdog = threading.Timer(timeout_seconds, _exit_with, args=(message,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_seconds + 60)
  except Exception as error:  # jaxlib raises XlaRuntimeError subclasses, not a public type
    raise StartupError(f"{message}; {str(error).splitlines()[0]}") from None
  finally:
    watchdog.cancel()


def _exit_with(message: str) -> None:
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  os._exit(1)
