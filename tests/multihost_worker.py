"""One process of a multi-process CPU run: `python multihost_worker.py PID N PORT [TIMEOUT]`.

Trains a few steps of the tiny config on fixed global batches, each process feeding its rows,
scores BLEU and chrF over sentences split unevenly between the processes, and prints the losses
and scores as JSON on its last line.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

from transformer import distributed, evaluation, sharding, steps  # noqa: E402

from tests import helpers, tiny_config  # noqa: E402


def main() -> None:
  process_id, num_processes, port = (int(x) for x in sys.argv[1:4])
  timeout = int(sys.argv[4]) if len(sys.argv) > 4 else 60
  try:
    distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id, timeout)
  except distributed.StartupError as error:
    raise SystemExit(f"error: {error}")
  config = tiny_config.get_config()
  config.train.warmup_steps = 2
  setup = steps.make_setup(config)
  state = steps.initial_state(setup)
  step = steps.compiled_train_step(setup, config)
  losses = []
  for batch in helpers.fixed_batches(3):
    rows = len(batch["inputs"]) // num_processes
    local = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}
    state, metrics = step(state, sharding.global_batch(local, setup.mesh))
    losses.append(float(metrics["loss_sum"]) / float(metrics["weight"]))
  hypotheses, references = helpers.SCORED_PAIRS
  mine = slice(0, 2) if process_id == 0 else slice(2, None)  # 2 sentences here, the rest there
  scores = evaluation.score(hypotheses[mine], references[mine], "en")
  print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                    "losses": losses, "bleu": scores["bleu"], "chrf": scores["chrf"]}))


if __name__ == "__main__":
  main()
