"""The command-line app: `python -m transformer.main --config=experiments/configs/smoke.py`.

Intentionally short, and the only module that reads flags; everything else takes arguments.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from transformer import config as model_config
from transformer import describe, distributed, run
from transformer.data import datasets, inputs, stats
from transformer.data.corpus import DataError

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/smoke.py", "Experiment config file (get_config()).",
    lock_config=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "compile", "describe", "data_stats"],
                          "train: train and evaluate (resumes from --workdir); compile: compile "
                          "the train step and report its memory and FLOPs; describe: parameter "
                          "counts and a forward pass; data_stats: dataset statistics.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Run directory (local or gs://): tokenizer, "
                               "checkpoints, metrics.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host outside TPU VMs: "
                                   "host:port of process 0 (on TPU VMs leave unset).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (implied "
                               "by --coordinator_address; automatic settings on TPU VMs).")
_INIT_TIMEOUT = flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for every "
                                     "process to join before failing.")


def main(argv: list[str]) -> None:
  """Dispatches on --mode; bad input exits non-zero with a one-line message."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (Orbax, tfds) drown the progress
  try:
    if _MULTIHOST.value or _COORDINATOR.value:
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                             _INIT_TIMEOUT.value)
    if _MODE.value == "train":
      run.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == "compile":
      print(run.compile_report(config))
    elif _MODE.value == "describe":
      print(describe.summary(model_config.from_dict(config.model.to_dict()), seed=config.seed))
    elif _MODE.value == "data_stats":
      builder = datasets.prepare(config.data)
      tokenizer = inputs.get_tokenizer(builder, config, _WORKDIR.value)
      print(stats.report(builder, config, tokenizer, _WORKDIR.value))
  except (ValueError, DataError, FloatingPointError, distributed.StartupError) as error:
    logging.error("%s", error)
    raise SystemExit(f"error: {error}") from None


def run_app() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run_app()
