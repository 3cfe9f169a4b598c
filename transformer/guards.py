"""What stops a training run safely: preemption agreed across hosts, and non-finite numbers.

SIGTERM (a TPU preemption notice, `kill`) reaches the hosts of a slice at different moments. Each
process sets its own flag, and every step the processes agree on "any flag set" with an
all-gather, so that every host saves the same step and exits; a host deciding alone would enter
Orbax's collective save at another step than the others and hang.
"""

from __future__ import annotations

import math
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


# SIGTERM: TPU preemption notices, `kill`, SLURM preemption and scancel. SIGUSR1: SLURM's
# `--signal` warning before a job's time limit (launch/slurm.py requeues the job after the save).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
  """Turns SIGTERM or SIGUSR1 into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self) -> bool:
    """Whether any process has received SIGTERM: the same answer on every process.

    A collective on multi-process runs, so every process must call it at the same step.
    """
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
    return bool(np.any(flags))

  def restore(self) -> None:
    """Puts the previous handlers back."""
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def check_finite_losses(pending: list[tuple[int, jax.Array]], last_checkpoint: int | None
                        ) -> None:
  """Raises FloatingPointError naming the first step whose loss is NaN or infinite."""
  for step, loss in pending:
    value = float(loss)
    if not math.isfinite(value):
      raise FloatingPointError(f"training loss became {value} at step {step}; stopping. The last "
                               f"good checkpoint is step {last_checkpoint}")
  pending.clear()


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(tree: Any) -> bool:
  """Whether every floating-point number in a tree of (possibly sharded) arrays is finite."""
  return bool(_all_finite(tree))


def check_finite_parameters(params: Any, step: int, last_checkpoint: int | None) -> None:
  """Raises FloatingPointError before parameters that are NaN/inf get checkpointed."""
  if not all_finite(params):
    raise FloatingPointError(f"parameters became NaN or infinite by step {step}; stopping "
                             f"without saving them. The last good checkpoint is step "
                             f"{last_checkpoint}")
