"""The workdir contract: paths, readers and the one atomic write."""

import json
import os

import pytest

from transformer import workdir


def test_atomic_file_leaves_nothing_when_the_writer_fails(tmp_path):
  path = str(tmp_path / "out.txt")
  workdir.write_atomically(path, "old\n")
  with pytest.raises(RuntimeError):
    with workdir.atomic_file(path) as handle:
      handle.write("half of the new content")
      raise RuntimeError("interrupted")
  assert open(path).read() == "old\n"  # the complete earlier file, untouched
  assert os.listdir(tmp_path) == ["out.txt"]  # no temporary left behind
  workdir.write_atomically(path, b"\x00\x01", mode=0o755)
  assert open(path, "rb").read() == b"\x00\x01" and os.stat(path).st_mode & 0o777 == 0o755


def test_readers_find_what_a_run_leaves(tmp_path):
  run = str(tmp_path)
  assert workdir.read_provenance(run) is None and workdir.newest_evaluation(run) is None
  assert not workdir.has_checkpoint(run, 20)
  os.makedirs(os.path.join(workdir.checkpoints(run), "20"))
  assert workdir.has_checkpoint(run, 20) and not workdir.has_checkpoint(run, 10)
  workdir.write_atomically(workdir.provenance(run), json.dumps({"commit": "abc"}))
  assert workdir.read_provenance(run) == {"commit": "abc"}
  workdir.write_atomically(workdir.metrics(run), '{"step": 10}\n\n{"step": 20}\n')
  assert workdir.read_metrics(run) == [{"step": 10}, {"step": 20}]
  os.makedirs(workdir.evaluations(run))
  # Written within one second (0.3 s apart, in nanoseconds): the newest is the one written last.
  second = 1_800_000_000 * 10**9
  for offset, name, bleu in ((0, "a.json", 29.0), (3, "c.json", 30.0), (6, "b.json", 31.0)):
    path = os.path.join(workdir.evaluations(run), name)
    workdir.write_atomically(path, json.dumps({"bleu": bleu}))
    os.utime(path, ns=(second + offset * 10**8, second + offset * 10**8))
  assert workdir.newest_evaluation(run) == {"bleu": 31.0}
