"""`--mode=export`: a trained checkpoint as a CTranslate2 or Hugging Face Transformers model.

Both need the `[serve]` extra (ctranslate2, transformers; the Hugging Face export also needs
PyTorch). The directory appears complete or not at all: it is written beside its final path
and renamed when done.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from typing import Iterator

import ml_collections
from flax import linen as nn

from transformer import checkpointing
from transformer import config as config_lib
from transformer import workdir as workdir_lib
from transformer.export import weights as weights_lib
from transformer.export.weights import ExportError

FORMATS = {"ctranslate2": "transformer.export.to_ctranslate2",
           "huggingface": "transformer.export.to_huggingface"}
_NEEDS = {"ctranslate2": "ctranslate2", "huggingface": "transformers and torch"}

__all__ = ["ExportError", "FORMATS", "export"]


def exporter(export_format: str):
  """The module writing `export_format`; a one-line error naming what to install if absent."""
  if export_format not in FORMATS:
    raise ExportError(f"--export.format={export_format}: choose one of {', '.join(FORMATS)}")
  try:
    return importlib.import_module(FORMATS[export_format])
  except ModuleNotFoundError as missing:
    raise ExportError(f"--export.format={export_format} needs {_NEEDS[export_format]} "
                      f"(missing: {missing.name}): pip install -e '.[serve]'") from None


@contextlib.contextmanager
def staged_directory(directory: str) -> Iterator[str]:
  """A fresh directory beside `directory`, renamed to it when the block succeeds and removed
  when it fails, so `directory` is never left half-written."""
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise ExportError(f"--export.dir={directory} exists and is not empty: pick a new "
                      "directory or delete it")
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.partial-", dir=parent)
  try:
    yield os.path.join(staging, "model")
    if os.path.isdir(directory):
      os.rmdir(directory)  # the empty directory the check allowed
    os.rename(os.path.join(staging, "model"), directory)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def export(config: ml_collections.ConfigDict, workdir: str, checkpoint_dir: str | None,
           export_format: str, directory: str, quantization: str = "none") -> str:
  """Writes the checkpoint (latest step of `checkpoint_dir`, default WORKDIR/checkpoints) to
  `directory` in `export_format`; returns a one-line summary."""
  if not directory:
    raise ExportError("--export.dir is required: the directory to write the model into")
  module = exporter(export_format)
  if export_format == "huggingface" and quantization != "none":
    raise ExportError("--export.quantization applies to --export.format=ctranslate2 only")
  if export_format == "ctranslate2" and quantization not in module.QUANTIZATIONS:
    raise ExportError(f"--export.quantization={quantization}: choose one of "
                      f"{', '.join(module.QUANTIZATIONS)}")
  checkpoint_dir = checkpoint_dir or workdir_lib.checkpoints(workdir)
  loaded = checkpointing.load(config, checkpoint_dir)
  model_config = config_lib.from_dict(loaded.config.model.to_dict())
  module.check(model_config, loaded.tokenizer)
  weights = weights_lib.from_params(nn.unbox(loaded.params), model_config)
  with staged_directory(directory) as staging:
    if export_format == "ctranslate2":
      module.write(model_config, weights, loaded.tokenizer, staging, quantization)
    else:
      module.write(model_config, weights, loaded.tokenizer, staging)
    with open(os.path.join(staging, "sentencepiece.model"), "wb") as handle:
      handle.write(loaded.tokenizer.model_proto)
    with open(os.path.join(staging, "exported_from.json"), "w", encoding="utf-8") as handle:
      json.dump({"format": export_format, "quantization": quantization, "step": loaded.step,
                 "checkpoint_dir": checkpoint_dir,
                 "config": loaded.config.to_dict()}, handle, indent=1, default=str)
  return (f"step {loaded.step} exported as {export_format}"
          f"{'' if quantization == 'none' else f' ({quantization})'} to {directory}")
