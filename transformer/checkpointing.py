"""Orbax checkpoints: train state, data-iterator position, config and tokenizer in each step.

Saves are asynchronous (the train state is written in the background; each process's input
position, a few hundred bytes of JSON, synchronously). Orbax writes each step into a temporary
directory and renames it when complete, so an interrupted save is never restored.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy

from transformer import steps
from transformer.data import tokenizer as tokenizer_lib
from transformer.data.tokenizer import TokenizerBase
from transformer.model import Transformer

STATE, ITERATOR, METADATA = "state", "data_iterator", "metadata"


class DataPositionHandler(ocp.CheckpointHandler):
  """Saves each process's input-stream position (a small JSON dict) in its own file."""

  def save(self, directory: epath.Path, args: "DataPositionSave") -> None:
    """Writes this process's position."""
    _position_file(directory).write_text(json.dumps(args.position))

  def restore(self, directory: epath.Path, args: "DataPositionRestore") -> Any:
    """This process's saved position, or None when the checkpoint has none for it (written by
    fewer processes, or by the tf.data pipeline of earlier versions)."""
    path = _position_file(directory)
    return json.loads(path.read_text()) if path.exists() else None


def _position_file(directory: epath.Path) -> epath.Path:
  return directory / f"process_{jax.process_index()}.json"


@ocp.args.register_with_handler(DataPositionHandler, for_save=True)
@dataclasses.dataclass
class DataPositionSave(ocp.args.CheckpointArgs):
  """Orbax argument: the position to save."""

  position: dict[str, Any]


@ocp.args.register_with_handler(DataPositionHandler, for_restore=True)
@dataclasses.dataclass
class DataPositionRestore(ocp.args.CheckpointArgs):
  """Orbax argument: restore this process's position."""


def checkpoint_path(directory: str) -> epath.Path:
  """`directory` as Orbax needs it: local paths made absolute (`--workdir=runs/x` works)."""
  return epath.Path(directory if "://" in directory else os.path.abspath(directory))


def make_manager(directory: str, *, keep: int, save_every: int, best_metric: str,
                 best_mode: str, keep_best: int = 1) -> ocp.CheckpointManager:
  """A manager keeping the `keep` latest checkpoints and the `keep_best` best by `best_metric`."""
  if best_mode not in ("min", "max"):
    raise ValueError(f"config.train.best_mode must be one of min, max; got {best_mode!r}")
  policy = preservation_policy.AnyPreservationPolicy([
      preservation_policy.LatestN(n=keep),
      preservation_policy.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                                reverse=best_mode == "min", n=keep_best,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, preservation_policy=policy, create=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_path(directory), options=options,
                               item_names=(STATE, ITERATOR, METADATA))


def save_only(directory: str, step: int, state: Any, metadata: dict[str, Any]) -> None:
  """Saves `state` and `metadata` as the one checkpoint in `directory` (earlier steps deleted),
  e.g. an average, which `load(..., directory)` then finds whatever its step."""
  writer = ocp.CheckpointManager(checkpoint_path(directory),
                                 options=ocp.CheckpointManagerOptions(create=True),
                                 item_names=(STATE, METADATA))
  for earlier in writer.all_steps():
    writer.delete(earlier)
  writer.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state), METADATA: ocp.args.JsonSave(metadata)}), force=True)
  writer.wait_until_finished()


def read_only_manager(directory: str) -> ocp.CheckpointManager:
  """A manager for reading the checkpoints of `directory` (evaluation, averaging)."""
  return ocp.CheckpointManager(checkpoint_path(directory),
                               options=ocp.CheckpointManagerOptions(read_only=True),
                               item_names=(STATE, ITERATOR, METADATA))


def save(manager: ocp.CheckpointManager, step: int, state: Any, position: dict[str, Any],
         metadata: dict[str, Any], metrics: dict[str, float] | None = None,
         force: bool = False) -> bool:
  """Starts saving `step` (asynchronously) with this process's input `position`; returns
  whether a save was started."""
  args = ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      ITERATOR: DataPositionSave(position),
      METADATA: ocp.args.JsonSave(metadata),
  })
  return manager.save(step, args=args, metrics=metrics, force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any
            ) -> tuple[Any, dict[str, Any]]:
  """Restores the state onto `abstract_state`'s shardings (any mesh) and the metadata."""
  items = {STATE: ocp.args.StandardRestore(abstract_state), METADATA: ocp.args.JsonRestore()}
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored[STATE], restored[METADATA]


def restore_position(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
  """This process's input position saved with `step` (None if the checkpoint has none)."""
  restored = manager.restore(step, args=ocp.args.Composite(**{ITERATOR: DataPositionRestore()}))
  return restored[ITERATOR]


def restore_metadata(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """Only the config and tokenizer of a checkpoint."""
  restored = manager.restore(step, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))
  return restored[METADATA]


def encode_bytes(data: bytes) -> str:
  """Bytes (the SentencePiece model) as text for the JSON metadata."""
  return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
  """Inverse of `encode_bytes`."""
  return base64.b64decode(text.encode("ascii"))


@dataclasses.dataclass
class Loaded:
  """A restored model ready for inference."""

  config: ml_collections.ConfigDict  # as trained, with this run's mesh/decode/eval settings
  model: Transformer
  params: Any
  tokenizer: TokenizerBase
  step: int
  mesh: Any


def load(config: ml_collections.ConfigDict, directory: str, step: int | None = None) -> Loaded:
  """Restores parameters, config and tokenizer from `directory` (latest step by default)."""
  if not epath.Path(directory).is_dir():
    raise FileNotFoundError(f"no checkpoint in {directory}: train one first with "
                            f"`python -m transformer.main --config=... --workdir=...`")
  manager = read_only_manager(directory)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}: train one first with "
                            f"`python -m transformer.main --config=... --workdir=...`")
  metadata = restore_metadata(manager, step)
  trained = ml_collections.ConfigDict(metadata["config"])
  for section in ("mesh", "decode", "eval", "data"):
    if section == "data":  # where the data lives may differ; what the model saw may not
      trained.data.update({k: config.data[k] for k in ("data_dir", "source_dir",
                                                       "eval_batch_size")})
    else:
      trained[section] = config[section]
  setup = steps.make_setup(trained)
  state, _ = restore(manager, step, setup.abstract_state)
  tokenizer = tokenizer_lib.from_bytes(decode_bytes(metadata["tokenizer"]))
  return Loaded(trained, setup.model, state.params, tokenizer, step, setup.mesh)
