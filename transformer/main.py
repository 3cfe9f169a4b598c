"""The command-line app: `python -m transformer.main --config=experiments/configs/smoke.py`.

The only module that reads flags; everything else takes explicit arguments.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from transformer import config as model_config
from transformer import describe
from transformer.data import datasets, inputs, stats
from transformer.data.corpus import DataError

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/smoke.py", "Experiment config file (get_config()).",
    lock_config=True)
_MODE = flags.DEFINE_enum("mode", "describe", ["describe", "data_stats"], "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Run directory: tokenizer, checkpoints, logs.")


def main(argv: list[str]) -> None:
  """Dispatches on --mode."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  try:
    model = model_config.from_dict(config.model.to_dict())
    if _MODE.value == "describe":
      print(describe.summary(model, seed=config.seed))
    elif _MODE.value == "data_stats":
      builder = datasets.prepare(config.data)
      tokenizer = inputs.get_tokenizer(builder, config, _WORKDIR.value)
      print(stats.report(builder, config, tokenizer, _WORKDIR.value))
  except (ValueError, DataError) as error:
    raise SystemExit(f"error: {error}") from None


def run_app() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run_app()
