"""What runs without TensorFlow (and clu): everything; without tfds too: the model's path.

Each test starts a subprocess in which the modules look uninstalled (hidden from every import
finder, so `importlib.util.find_spec` says None, as libraries probe for TensorFlow):
- without TensorFlow, tfds, clu (the GPU machine we measure on): compiled train steps on
  synthetic batches (`benchmarks/train_speed.py`'s set-up), beam and greedy decoding, and the
  ahead-of-time compile;
- without TensorFlow and clu: the tiny config end to end (prepare ArrayRecord data, train,
  resume, evaluate, translate, data statistics), and a `gs://` workdir, tokenizer and sweep
  results on a fake bucket (fsspec's in-memory filesystem standing in for gcsfs).
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")


def hiding(modules: tuple[str, ...]) -> str:
  """Python that makes `modules` look uninstalled to every later import."""
  return f"""
import sys
class Hidden:
  def __init__(self, finder):
    self.finder = finder
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {modules!r}:
      return None
    return self.finder.find_spec(name, path, target)
  def __getattr__(self, attribute):
    return getattr(self.finder, attribute)
sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
"""


SCRIPT = hiding(BLOCKED) + f"""
import jax, numpy as np
from benchmarks import train_speed
from transformer import aot, inference, steps

config, setup, state, batch = train_speed.jax_setup("tiny", batch_size=4, length=16)
step = steps.compiled_train_step(setup, config)
losses = []
for _ in range(3):
  state, metrics = step(state, batch)
  losses.append(float(metrics["loss_sum"]) / float(metrics["weight"]))
assert all(np.isfinite(losses)) and len(set(losses)) == 3, losses  # finite, and stepping
inputs = jax.numpy.asarray(np.asarray(batch["inputs"])[:2, :8])
for method in ("beam", "greedy"):
  options = inference.DecodeOptions(method=method, beam_size=2, extra_length=4)
  ids, scores = inference.translate_ids(setup.model, state.params, inputs, options)
  assert ids.shape[0] == 2 and np.all(np.isfinite(np.asarray(scores))), method
config.data.update(eval_batch_size=2, max_eval_length=8)
report = aot.compile_report(config)
assert report["train"]["hbm_bytes_per_device"] > 0
print("blocked:", sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
"""


def run_script(script: str) -> list[str]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.strip().splitlines()


def test_train_step_decoding_and_compile_run_without_tensorflow_tfds_or_clu():
  assert run_script(SCRIPT)[-1] == "blocked: []"


END_TO_END = hiding(("tensorflow", "clu")) + r"""
import io, json, os, tempfile
import fsspec
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem
from tensorboardX import record_writer
from tests import tiny_config
from experiments import sweep
from transformer import modes, run, workdir as workdir_lib
from transformer.data import datasets, inputs, stats, tokenizer as tokenizer_lib

root = tempfile.mkdtemp()
config = tiny_config.get_config()
config.data.data_dir = os.path.join(root, "tfds")
config.train.update(num_steps=12, eval_every_steps=6, checkpoint_every_steps=6, test_at_end=False)
workdir = os.path.join(root, "run")
first = run.train_and_evaluate(config, workdir)
config.train.num_steps = 14
resumed = run.train_and_evaluate(config, workdir)  # from step 12's checkpoint and input position
assert resumed["loss"] > 0 and [r["step"] for r in workdir_lib.read_metrics(workdir)][-1] == 14
position = json.loads(open(os.path.join(workdir, "checkpoints", "12", "data_iterator",
                                        "process_0.json")).read())
assert position["process_count"] == 1 and len(json.dumps(position)) < 1000, position
result = modes.evaluate(config, workdir)
assert 0 <= result["bleu"] <= 100 and result["sentences"] == 40
sources = os.path.join(root, "sources.txt")
open(sources, "w").write("one hundred two\n\nseven\n")
output = io.StringIO()
assert modes.translate(config, workdir, sources, output) == 3
assert output.getvalue().count("\n") == 3
builder = datasets.prepare(config.data)
assert "packing efficiency" in stats.report(builder, config, inputs.get_tokenizer(
    builder, config, workdir), os.path.join(root, "stats"))

# gs:// through etils.epath and fsspec (gcsfs in real use; an in-memory bucket here).
for protocol in ("gs", "gcs"):
  fsspec.register_implementation(protocol, MemoryFileSystem, clobber=True)
bucket = "gs://bucket/run"
tokenizer = inputs.get_tokenizer(builder, config, bucket)  # trained, saved to the bucket
again = tokenizer_lib.load(bucket + "/" + tokenizer_lib.MODEL_FILE)
assert again.model_proto == tokenizer.model_proto


class BucketRecordWriter:  # tensorboardX's own gs:// writer needs credentials: the fake bucket
  def __init__(self, path):
    self.path, self.data = path, b""
  def write(self, data):
    self.data += data
  def flush(self):
    MemoryFileSystem().pipe(self.path, self.data)
  def close(self):
    self.flush()


class BucketWriters:
  def open(self, path):
    return BucketRecordWriter(path)
  def directory_check(self, path):
    pass


record_writer.register_writer_factory("gs", BucketWriters())
log = run.MetricsLog(bucket)
log.write(1, {"loss": 2.0})
log.write(2, {"loss": 1.5})
log.close()
assert [r["loss"] for r in workdir_lib.read_metrics(bucket)] == [2.0, 1.5]
assert len(list(epath.Path(bucket).glob("events.out.tfevents.*"))) == 1
workdir_lib.write_atomically(workdir_lib.provenance(bucket), json.dumps({"seed": 0}))
assert workdir_lib.read_provenance(bucket) == {"seed": 0}
sweep.append_result("gs://bucket/sweep", {"point": "a", "steps": 1})
sweep.append_result("gs://bucket/sweep", {"point": "b", "steps": 2})
assert sorted(sweep.recorded_rows("gs://bucket/sweep")) == ["a", "b"]

# Prepared data in a bucket: prepared through the local disk, uploaded, read back by the C++
# ArrayRecord reader from a fake Cloud Storage that serves the same in-memory bucket.
from tests import fake_gcs
fake_gcs.serve()
in_bucket = type(config.data)(config.data.to_dict())
in_bucket.data_dir = "gs://bucket/tfds"
from_bucket = datasets.prepare(in_bucket)
print(datasets.prepared_summary(from_bucket))
assert str(from_bucket.data_dir).startswith("gs://bucket/tfds/")
assert list(datasets.load_split(from_bucket, in_bucket, "validation")) == list(
    datasets.load_split(builder, config.data, "validation"))
local_batch = next(iter(inputs.train_dataset(builder, config, tokenizer)))
bucket_batch = next(iter(inputs.train_dataset(from_bucket, config, tokenizer)))
assert all((local_batch[key] == bucket_batch[key]).all() for key in local_batch)
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "clu")))
"""


def test_train_resume_evaluate_translate_and_gs_paths_without_tensorflow():
  assert run_script(END_TO_END)[-1] == "loaded: []"
