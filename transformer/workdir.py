"""The workdir contract: what a run leaves where, one reader for each, and one atomic write.

    WORKDIR/
      checkpoints/STEP/     training's Orbax checkpoints (`--mode=average`: averaged/STEP)
      metrics.jsonl         one JSON record per log interval and per validation
      provenance.json       commit, versions, devices, seed and config (process 0)
      eval/NAME.json        each `--mode=evaluate` result, NAME.hyp.txt its translations
      compile/NAME.json     `--mode=compile` reports

Paths may be local or `gs://` (through `etils.epath`). Every file a reader may find is written
by `write_atomically`/`atomic_file`: complete or absent, never half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterator

from etils import epath

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PROVENANCE = "provenance.json"
EVALUATIONS = "eval"
COMPILE_REPORTS = "compile"


def checkpoints(workdir: str) -> str:
  """Where training writes its checkpoints."""
  return os.path.join(workdir, CHECKPOINTS)


def metrics(workdir: str) -> str:
  """The trainer's log of records."""
  return os.path.join(workdir, METRICS)


def provenance(workdir: str) -> str:
  """What the trainer recorded about its code and machine."""
  return os.path.join(workdir, PROVENANCE)


def evaluations(workdir: str) -> str:
  """The directory of `--mode=evaluate` results."""
  return os.path.join(workdir, EVALUATIONS)


def compile_reports(workdir: str) -> str:
  """The directory of `--mode=compile` reports."""
  return os.path.join(workdir, COMPILE_REPORTS)


def has_checkpoint(workdir: str, step: int) -> bool:
  """Whether training saved the checkpoint of `step`."""
  return epath.Path(checkpoints(workdir), str(step)).is_dir()


def read_json(path: str) -> Any:
  """A JSON file's content (local or gs://)."""
  return json.loads(epath.Path(path).read_text())


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `metrics.jsonl`, in the order they were logged."""
  lines = epath.Path(metrics(workdir)).read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]


def read_provenance(workdir: str) -> dict[str, Any] | None:
  """`provenance.json`, or None when the run wrote none."""
  path = provenance(workdir)
  return read_json(path) if epath.Path(path).exists() else None


def newest_evaluation(workdir: str) -> dict[str, Any] | None:
  """The `eval/*.json` written last (the run's final evaluation), or None."""
  directory = epath.Path(evaluations(workdir))
  paths = list(directory.glob("*.json")) if directory.is_dir() else []
  if not paths:
    return None
  return read_json(os.fspath(max(paths, key=_modified_ns)))


def _modified_ns(path: epath.Path) -> int:
  # epath's mtime is in whole seconds: two evaluations a second apart would tie locally.
  if "://" in os.fspath(path):
    return int(path.stat().mtime) * 10**9
  return os.stat(path).st_mtime_ns


@contextlib.contextmanager
def atomic_file(path: str, binary: bool = False, mode: int | None = None) -> Iterator[IO[Any]]:
  """A file handle whose content appears at `path` only if the block completes: written to a
  temporary file beside it, moved over `path` at the end, removed on an exception. `mode` sets
  the permissions of a local file."""
  temporary = epath.Path(f"{path}.tmp-{os.getpid()}")
  try:
    with temporary.open("wb" if binary else "w") as handle:
      yield handle
    if mode is not None:
      os.chmod(temporary, mode)
    temporary.replace(path)
  finally:
    if temporary.exists():
      temporary.unlink()


def write_atomically(path: str, data: str | bytes, mode: int | None = None) -> str:
  """Writes `data` to `path`, complete or not at all; returns `path`."""
  with atomic_file(path, binary=isinstance(data, bytes), mode=mode) as handle:
    handle.write(data)
  return path


def append_line(path: str, line: str) -> None:
  """Adds `line` (and a newline) to a text file. Object stores (`gs://`) have no append: the
  file is rewritten whole, atomically (fine for logs of thousands of lines)."""
  if "://" not in path:
    with open(path, "a", encoding="utf-8") as handle:
      handle.write(line + "\n")
    return
  existing = epath.Path(path).read_text() if epath.Path(path).exists() else ""
  write_atomically(path, existing + line + "\n")
