"""The command-line app: `python -m transformer.main --config=experiments/configs/smoke.py`.

Every field of the config file is a flag as well: `--config.train.num_steps=100`,
`--config.model.dropout_rate=0.3`, `--config.data.batch_size=32` (docs/training.md).
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from transformer import config as model_config
from transformer import (aot, attention_maps, cli_errors, describe, distributed, export, gpus,
                         modes, quiet_start, run)
from transformer import workdir as workdir_lib
from transformer.data import datasets, inputs, stats
from transformer.data.corpus import DataError

_DEFAULT_CONFIG = "experiments/configs/smoke.py"
if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "transformer-main":
  # Named explicitly, the config file is loaded once, when the flags are parsed (parse_flags
  # turns its mistakes into one line); a default left implicit would be loaded here already,
  # with the overrides, and fail with a traceback.
  sys.argv[1:1] = cli_errors.explicit_config(sys.argv[1:], _DEFAULT_CONFIG)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file (get_config()).", lock_config=True)
_MODE = flags.DEFINE_enum(
    "mode", "train",
    ["train", "evaluate", "translate", "average", "attention", "compile", "describe",
     "data_stats", "prepare", "export"],
    "train: train and evaluate (resumes from --workdir); evaluate: decode a split or file pair "
    "and report sacreBLEU/chrF; translate: --input to --output; average: average the last "
    "checkpoints; attention: heatmaps for --sentence; compile: compile the train step and report "
    "its memory and FLOPs; describe: parameter counts and a forward pass; data_stats: dataset "
    "statistics; prepare: write the dataset's ArrayRecord files into config.data.data_dir and "
    "exit (what `tfds build` does, without TensorFlow); export: write the checkpoint as a "
    "CTranslate2 or Hugging Face model (--export.format, --export.dir).")
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Run directory (local or gs://): tokenizer, "
                               "checkpoints, metrics.")
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Checkpoints to evaluate/translate "
                                      "with (default WORKDIR/checkpoints; WORKDIR/averaged after "
                                      "--mode=average).")
_INPUT = flags.DEFINE_string("input", "-", "translate: input file, one sentence per line "
                             "('-' = stdin).")
_OUTPUT = flags.DEFINE_string("output", "-", "translate: output file ('-' = stdout).")
_SENTENCE = flags.DEFINE_string("sentence", None, "attention: the source sentence to draw.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host outside TPU VMs: "
                                   "host:port of process 0 (on TPU VMs leave unset).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (implied "
                               "by --coordinator_address; automatic settings on TPU VMs).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "compile: a Cloud TPU accelerator type (v4-8, v4-32, v5litepod-8, v5p-8, "
    "v6e-8, ...; needs `pip install -e '.[tpu]'`) or NVIDIA GPUs (a100, h100, h200, or -N for N "
    "GPUs, 8 per node: h100-8, h200-16; needs `pip install -e '.[gpu_compile]'`) to compile for "
    "ahead of time, without that hardware; unset: this host's devices.")
_EXPORT_FORMAT = flags.DEFINE_enum(
    "export.format", "ctranslate2", ["ctranslate2", "huggingface"],
    "export: ctranslate2 (a CTranslate2 model directory) or huggingface (MarianMTModel + "
    "MarianTokenizer); both need `pip install -e '.[serve]'`.")
_EXPORT_DIR = flags.DEFINE_string("export.dir", None, "export: the directory to write (must be "
                                  "new or empty; written completely or not at all).")
_EXPORT_QUANTIZATION = flags.DEFINE_string(
    "export.quantization", "none", "export to ctranslate2: none (float32), int8, int8_float32, "
    "int8_float16, float16 or bfloat16 weights.")
_INIT_TIMEOUT = flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for every "
                                     "process to join before failing.")


def main(argv: list[str]) -> None:
  """Dispatches on --mode; bad input exits non-zero with a one-line message."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (Orbax, tfds) drown the progress
    logging.get_absl_handler().addFilter(_drop_routine_library_warnings)
  try:
    if _TOPOLOGY.value:
      if _MODE.value != "compile":
        raise ValueError("--topology is only for --mode=compile")
      aot.prepare_off_device_compilation()
    elif quiet_start.has_nvidia_gpu():
      gpus.set_gpu_environment()  # before JAX starts its GPU backend; XLA_FLAGS set by hand win
    if _MULTIHOST.value or _COORDINATOR.value:
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                             _INIT_TIMEOUT.value)
    mode, workdir = _MODE.value, _WORKDIR.value
    if mode == "train":
      run.train_and_evaluate(config, workdir)
    elif mode == "evaluate":
      result = modes.evaluate(config, workdir, _CHECKPOINT_DIR.value)
      print(f"{result['split']} (step {result['step']}, {result['sentences']} sentences, decoded "
            f"in {result['decode_seconds']:.1f} s): BLEU {result['bleu']:.2f} "
            f"chrF {result['chrf']:.2f}\n"
            f"BLEU signature ({result['bleu_style']}): {result['bleu_signature']}\n"
            f"chrF signature: {result['chrf_signature']}")
      for style, extra in result.get("extra_bleu", {}).items():
        print(f"BLEU ({style}) {extra['bleu']:.2f}, signature: {extra['bleu_signature']}")
    elif mode == "translate":
      translate_to_output(config, workdir)
    elif mode == "average":
      print(modes.average(config, workdir))
    elif mode == "attention":
      if not _SENTENCE.value:
        raise ValueError("--mode=attention needs --sentence='...'")
      for path in attention_maps.attention_maps(config, workdir, _SENTENCE.value,
                                          _CHECKPOINT_DIR.value):
        print(path)
    elif mode == "compile":
      print(aot.compile_mode(config, workdir, _TOPOLOGY.value))
    elif mode == "describe":
      print(describe.summary(model_config.from_dict(config.model.to_dict()), seed=config.seed))
    elif mode == "export":
      print(export.export(config, workdir, _CHECKPOINT_DIR.value, _EXPORT_FORMAT.value,
                          _EXPORT_DIR.value, _EXPORT_QUANTIZATION.value))
    elif mode == "prepare":
      print(datasets.prepared_summary(datasets.prepare(config.data)))
    elif mode == "data_stats":
      builder = datasets.prepare(config.data)
      tokenizer = inputs.get_tokenizer(builder, config, workdir)
      print(stats.report(builder, config, tokenizer, workdir))
  except (ValueError, DataError, FloatingPointError, FileNotFoundError,
          distributed.StartupError) as error:
    raise SystemExit(f"error: {error}") from None


def translate_to_output(config, workdir: str) -> None:
  """--mode=translate: writes to --output atomically (a temporary file renamed when done)."""
  if _OUTPUT.value == "-":
    modes.translate(config, workdir, _INPUT.value, sys.stdout, _CHECKPOINT_DIR.value)
    return
  with workdir_lib.atomic_file(_OUTPUT.value) as output:
    modes.translate(config, workdir, _INPUT.value, output, _CHECKPOINT_DIR.value)


_ROUTINE_WARNINGS = ("Using custom data configuration",  # tfds, on every load of our builders
                     "CheckpointManagerOptions.read_only=True",  # Orbax, reading checkpoints
                     "Given directory is read only")


def _drop_routine_library_warnings(record: pylogging.LogRecord) -> bool:
  """Warnings libraries print on every ordinary load: not news to a user."""
  return not record.getMessage().startswith(_ROUTINE_WARNINGS)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config file or key that does not exist as a one-line error;
  `--help` (`-h`, `--helpfull`) prints the usage and exits 0 (absl's own exits 1)."""
  requested = [arg for arg in argv[1:] if arg in cli_errors.HELP_FLAGS]
  if requested:
    print(usage(full="--helpfull" in requested))
    sys.exit(0)
  try:
    remaining = flags.FLAGS(argv)
    _CONFIG.value.get("model")  # a config file that failed to load raises at any attribute
    return remaining
  except Exception as error:  # ml_collections raises AttributeError, OSError, flags.Error...
    try:
      message = cli_errors.explain(argv[1:], _DEFAULT_CONFIG, error)
    except ValueError as explained:
      message = str(explained)
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def usage(full: bool) -> str:
  """`--help`: this module's docstring and its flags (`--helpfull`: absl's flags as well)."""
  listed = flags.FLAGS.get_help() if full else flags.FLAGS.module_help(sys.modules[__name__])
  return f"{__doc__.strip()}\n\nflags:\n{listed}"


def run_app() -> None:
  """Console-script entry point."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run_app()
