"""The GPU check: correctness, train-step speed beside the peers, XLA flags and decoding, one GPU.

    python -m benchmarks.gpu_check [--rounds 3] [--steps 10] [--sizes base,big] [--out FILE|DIR]
    python -m benchmarks.gpu_check --quick   # a rehearsal on CPU: tiny sizes, same code paths
    bash benchmarks/gpu_session.sh           # on a lent GPU machine without network

Needs jax with a GPU (the `[cuda12]`/`[cuda13]` extra), flax, optax, torch with CUDA and
ml_collections; no TensorFlow. Sections, all in one JSON:
1. correctness: float32 logits on the GPU against the CPU with the same weights; the cuDNN kernel
   against the reference kernel in bfloat16 (outputs and gradients, and the whole model's logits);
   cached against uncached greedy decoding;
2. train steps at the paper's batch (96 rows x 256 tokens per side, bfloat16), base and big: ours
   with the `xla` and `cudnn` kernels and threefry / rbg dropout, the plain Flax peer
   (`flax_peer.py`, bfloat16) and PyTorch (`torch_peer.py`: bf16 autocast, fused Adam,
   `torch.compile`); rounds interleave the variants, the median round counts, min-max is kept;
   tokens/s, step time, MFU against the GPU's dense bf16 peak and against this run's measured
   large bf16 matmul rate, memory (XLA's compiled allocation; torch's peak allocation); at the
   first size also the step's memory options (`step_options.py`), each against the step
   without them;
3. our base step under the two XLA flag sets of `transformer/gpus.py` (fresh processes: XLA reads
   its flags once);
4. beam-4 decoding of a batch of 64 with the cache, sentences/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable


from transformer import gpus  # (first: quiet start-up, GPU flags before JAX starts)

if os.environ.get("GPU_CHECK_FLAGS") is None:
  gpus.set_gpu_environment()

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flax_peer
from benchmarks import step_options
from benchmarks import train_speed
from transformer import attention, config as model_configs, flops, inference, masks, steps
from transformer import workdir
from transformer.model import Transformer

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FULL = dict(rows=96, length=256, vocab=37000, sizes=("base", "big"))
QUICK = dict(rows=4, length=32, vocab=512, sizes=("tiny",))


def median_and_spread(samples: list[float]) -> dict[str, float]:
  """Median, minimum and maximum of the per-round figures."""
  return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def correctness(shape: dict[str, Any], gpu: bool) -> dict[str, Any]:
  """Logits on the device vs the CPU; cuDNN vs reference; cached vs uncached greedy."""
  size = shape["sizes"][0]
  d_model, heads, d_ff, layers = train_speed.SIZES[size]
  config = model_configs.ModelConfig(vocab_size=shape["vocab"], d_model=d_model, num_heads=heads,
                                     d_ff=d_ff, encoder_layers=layers, decoder_layers=layers,
                                     max_len=shape["length"] * 2)
  source, target = (jnp.asarray(x[:8, :64]) for x in train_speed.random_pair(
      8, shape["length"], shape["vocab"]))
  source = source.at[1, 40:].set(0)
  model = Transformer(config)
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    params = jax.jit(model.init)(jax.random.PRNGKey(0), source, target)["params"]
  forward = lambda cfg, p: jax.jit(Transformer(cfg).apply)({"params": p}, source, target)
  with jax.default_matmul_precision("highest"):
    on_device = np.asarray(forward(config, jax.device_put(params, jax.devices()[0])))
    with jax.default_device(cpu):
      reference = np.asarray(forward(config, params))
  result: dict[str, Any] = {"logits_float32_vs_cpu": {
      "max_abs_diff": float(np.abs(on_device - reference).max()),
      "max_abs_logit": float(np.abs(reference).max()), "tolerance": 1e-3}}
  result["logits_float32_vs_cpu"]["ok"] = result["logits_float32_vs_cpu"]["max_abs_diff"] <= 1e-3
  if gpu:
    result["cudnn_vs_reference_bf16"] = cudnn_against_reference()
    bf16 = config.replace(dtype="bfloat16")
    xla_logits = np.asarray(forward(bf16, params), np.float32)
    cudnn_logits = np.asarray(forward(bf16.replace(attention_kernel="cudnn"), params), np.float32)
    real = np.asarray(target > 0)[..., None] & np.ones_like(xla_logits, bool)
    diff = float(np.abs(cudnn_logits - xla_logits)[real].max())
    result["model_logits_cudnn_vs_xla_bf16"] = {"max_abs_diff": diff, "tolerance": 0.1,
                                                "ok": diff <= 0.1}
  options = inference.DecodeOptions(method="greedy", extra_length=8)
  cached = inference.translate_ids(model, params, source, options)[0]
  uncached = inference.translate_ids(model, params, source,
                                     inference.DecodeOptions(method="greedy", extra_length=8,
                                                             use_cache=False))[0]
  same = float(np.mean(np.all(np.asarray(cached) == np.asarray(uncached), axis=-1)))
  result["greedy_cached_vs_uncached"] = {"identical_fraction": same, "ok": same == 1.0}
  return result


def cudnn_against_reference(batch: int = 8, length: int = 256, heads: int = 8, d_k: int = 64
                            ) -> dict[str, Any]:
  """cuDNN attention vs the float32-softmax reference in bf16: outputs and gradients."""
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v, cotangent = (jax.random.normal(key, (batch, length, heads, d_k), jnp.bfloat16)
                        for key in keys)
  lengths = jnp.array([length, length // 2] * (batch // 2), jnp.int32)
  valid = jnp.arange(length)[None] < lengths[:, None]
  mask = masks.decoder_self_attention_mask(valid.astype(jnp.int32), None, pad_id=0)
  reference = lambda q, k, v: attention.reference_attention(q, k, v, mask.dense)[0]
  cudnn = lambda q, k, v: attention.cudnn_attention(q, k, v, mask)
  report = {}
  for name, kernel in (("reference", reference), ("cudnn", cudnn)):
    out, vjp = jax.vjp(jax.jit(kernel), q, k, v)
    report[name] = (np.asarray(out, np.float32), [np.asarray(g, np.float32)
                                                  for g in vjp(cotangent)])
  rows = np.asarray(valid)[:, :, None, None]
  scale = lambda x: float(np.abs(x).max()) or 1.0
  out_diff = np.abs(np.where(rows, report["cudnn"][0] - report["reference"][0], 0)).max()
  grad_diffs = [float(np.abs(np.where(rows, c - r, 0)).max() / scale(r))
                for c, r in zip(report["cudnn"][1], report["reference"][1])]
  relative = float(out_diff / scale(report["reference"][0]))
  return {"output_max_rel_diff": relative, "grad_max_rel_diff_qkv": grad_diffs,
          "tolerance": 2e-2, "ok": max([relative, *grad_diffs]) <= 2e-2}


def torch_runner(size: str, shape: dict[str, Any]) -> tuple[Callable[[int], float], int]:
  """(k -> seconds, peak bytes allocated) of the PyTorch peer at its best on the GPU."""
  import torch

  torch.cuda.reset_peak_memory_stats()
  run = train_speed.torch_step(size, True, (shape["rows"], shape["length"]), shape["vocab"],
                               device="cuda")
  return run, int(torch.cuda.max_memory_allocated())


def our_runner(size: str, shape: dict[str, Any], gpu: bool, kernel: str, prng: str,
               options: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
               ) -> tuple[Callable[[int], float], int, float]:
  """(k -> seconds, compiled bytes, model FLOPs per step) of our train step; `options` are
  (model, train) config changes (step_options.VARIANTS)."""
  config, setup, state, batch = train_speed.jax_setup(
      size, prng, batch_size=shape["rows"], length=shape["length"], vocab=shape["vocab"],
      train_overrides=options[1], dtype="bfloat16" if gpu else "float32",
      attention_kernel=kernel, **options[0])
  compiled = steps.compiled_train_step(setup, config).lower(state, batch).compile()
  analysis = compiled.memory_analysis()
  return (train_speed.timed_runner(lambda s: compiled(s, batch), state),
          int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes),
          steps.model_flops_per_step(setup, config))


def runners(size: str, shape: dict[str, Any], gpu: bool) -> tuple[dict, dict, float]:
  """Every variant's (k -> seconds) runner, its memory, and the model FLOPs per step."""
  variants = [("xla", "threefry2x32"), ("xla", "rbg")]
  if gpu:
    variants += [("cudnn", "threefry2x32"), ("cudnn", "rbg")]
  found, memory, model_flops = {}, {}, 0.0
  for kernel, prng in variants:
    name = f"ours_{kernel}_{prng}"
    found[name], memory[name], model_flops = our_runner(size, shape, gpu, kernel, prng)
  if size == shape["sizes"][0]:  # issue #60's memory options, each against the step without
    for option, changes in step_options.VARIANTS.items():
      name = f"ours_xla_threefry2x32 {option}"
      found[name], memory[name], _ = our_runner(size, shape, gpu, "xla", "threefry2x32", changes)
  source, target = train_speed.random_pair(shape["rows"], shape["length"], shape["vocab"])
  step, state = flax_peer.make_step(shape["vocab"], *train_speed.SIZES[size], source, target,
                                    dtype=jnp.bfloat16 if gpu else jnp.float32)
  found["flax_plain"] = train_speed.timed_runner(flax_peer.state_threading(step, source, target),
                                                 state)
  if gpu:
    found["torch_compile_bf16"], memory["torch_compile_bf16"] = torch_runner(size, shape)
  return found, memory, model_flops


def train_row(size: str, shape: dict[str, Any], gpu: bool, rounds: int, num_steps: int,
              peaks: dict[str, float]) -> dict[str, Any]:
  """Interleaved rounds of every variant at one model size."""
  variants, memory, model_flops = runners(size, shape, gpu)
  seconds: dict[str, list[float]] = {name: [] for name in variants}
  for round_index in range(rounds):
    for name, run in variants.items():
      seconds[name].append(run(num_steps) / num_steps)
    print(f"{size} round {round_index + 1}/{rounds}: " + ", ".join(
        f"{n} {1e3 * s[-1]:.1f} ms" for n, s in seconds.items()), flush=True)
  tokens = 2 * shape["rows"] * shape["length"]
  return {"tokens_per_step": tokens, "model_flops_per_step": model_flops, "variants": {
      name: {"step_ms": median_and_spread([1e3 * s for s in samples]),
             "tokens_per_second": tokens / statistics.median(samples),
             "mfu_vs_spec": model_flops / statistics.median(samples) / peaks["spec"],
             "mfu_vs_measured_matmul": model_flops / statistics.median(samples) /
             peaks["measured"], "memory_bytes": memory.get(name)}
      for name, samples in seconds.items()}}


def format_train_row(size: str, row: dict[str, Any]) -> str:
  """One size's variants as an aligned table."""
  width = max(len(name) for name in row["variants"])
  lines = [f"{size}: {row['tokens_per_step']:,d} tokens/step"]
  for name, figures in row["variants"].items():
    lines.append(f"  {name:{width}s} {figures['step_ms']['median']:8.1f} ms "
                 f"({figures['step_ms']['min']:.1f}-{figures['step_ms']['max']:.1f}) "
                 f"{figures['tokens_per_second']:>12,.0f} tok/s  MFU {figures['mfu_vs_spec']:.1%} "
                 f"(of measured matmul {figures['mfu_vs_measured_matmul']:.1%})")
  return "\n".join(lines)


def report_name(device_kind: str) -> str:
  """`gpu_h100.json` for a GPU of our table (`transformer/gpus.py`), else from its kind."""
  known = next((gpu.name for gpu in gpus.GPUS.values() if gpu.description == device_kind), None)
  return f"gpu_{known or re.sub(r'[^a-z0-9]+', '_', device_kind.lower()).strip('_')}.json"


def flag_set_step_ms(flag_set: tuple[str, ...], shape: dict[str, Any], gpu: bool,
                     rounds: int, num_steps: int) -> dict[str, float]:
  """Our base (or quick) step's time under an XLA flag set, in a fresh process."""
  env = {**os.environ, "GPU_CHECK_FLAGS": "1",
         "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""), *flag_set]).strip()}
  args = [sys.executable, "-m", "benchmarks.gpu_check", "--child_step", "--rounds", str(rounds),
          "--steps", str(num_steps)] + (["--quick"] if not gpu else [])
  result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if result.returncode != 0:
    return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def child_step(shape: dict[str, Any], gpu: bool, rounds: int, num_steps: int) -> None:
  """--child_step: prints the median/min/max step ms of our first size's default variant."""
  run = our_runner(shape["sizes"][0], shape, gpu, "cudnn" if gpu else "xla", "threefry2x32")[0]
  print(json.dumps(median_and_spread([1e3 * run(num_steps) / num_steps
                                      for _ in range(rounds)])))


def decoding(shape: dict[str, Any], gpu: bool) -> dict[str, Any]:
  """Beam-4 decoding with the cache of one batch (64 sentences; random weights decode to the
  length limit, the slowest case)."""
  d_model, heads, d_ff, layers = train_speed.SIZES[shape["sizes"][0]]
  config = model_configs.ModelConfig(
      vocab_size=shape["vocab"], d_model=d_model, num_heads=heads, d_ff=d_ff,
      encoder_layers=layers, decoder_layers=layers, max_len=2 * shape["length"],
      dtype="bfloat16" if gpu else "float32")
  rows = 64 if gpu else 8
  source = jnp.asarray(train_speed.random_pair(rows, shape["length"] // 2, shape["vocab"])[0])
  model = Transformer(config)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), source, source)["params"]
  options = inference.DecodeOptions(method="beam", beam_size=4, extra_length=50)
  ids = jax.block_until_ready(inference.translate_ids(model, params, source, options)[0])
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(inference.translate_ids(model, params, source, options))
    times.append(time.perf_counter() - start)
  return {"sentences": rows, "source_length": shape["length"] // 2, "output_length": ids.shape[-1],
          "sentences_per_second": rows / statistics.median(times),
          "seconds": median_and_spread(times)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10, help="steps per round and variant")
  parser.add_argument("--quick", action="store_true", help="CPU rehearsal: tiny sizes")
  parser.add_argument("--sizes", default="",
                      help=f"model sizes to train, comma-separated (default "
                      f"{','.join(FULL['sizes'])}; --quick: tiny; known: "
                      f"{', '.join(train_speed.SIZES)})")
  parser.add_argument("--out", default=RESULTS,
                      help="the JSON report, rewritten after each section, or a directory for "
                      "gpu_NAME.json, named for the GPU found (e.g. gpu_h100.json; default "
                      "benchmarks/results/)")
  parser.add_argument("--child_step", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  shape = QUICK if args.quick else FULL
  if args.sizes:
    unknown = [size for size in args.sizes.split(",") if size not in train_speed.SIZES]
    if unknown:
      raise SystemExit(f"error: --sizes: unknown size {unknown[0]!r}; known: "
                       f"{', '.join(train_speed.SIZES)}")
    shape = {**shape, "sizes": tuple(args.sizes.split(","))}
  device = jax.devices()[0]
  gpu = device.platform == "gpu"
  if not gpu and not args.quick:
    raise SystemExit(f"error: no GPU here (jax sees {device.platform}); use --quick to rehearse")
  if args.child_step:
    child_step(shape, gpu, args.rounds, args.steps)
    return
  out = (os.path.join(args.out, report_name(device.device_kind)) if os.path.isdir(args.out)
         else args.out)
  start = time.time()
  spec = next((peak for name, peak in flops.PEAK_FLOPS.items() if name in device.device_kind),
              0.0)
  measured = flops.measured_matmul_flops(8192 if gpu else 1024, 5,
                                         jnp.bfloat16 if gpu else jnp.float32)
  peaks = {"spec": spec or measured, "measured": measured}
  report: dict[str, Any] = {
      "device": device.device_kind, "jax": jax.__version__, "xla_flags":
      os.environ.get("XLA_FLAGS", ""), "peak_bf16_flops_spec": spec,
      "measured_matmul_flops": measured, "shape": {k: v for k, v in shape.items()},
      "method": __doc__.split("\n\n")[2], "train": {}}

  def save(section: str) -> None:  # after each section: a run cut short keeps what it measured
    report["wall_seconds"] = time.time() - start
    report["sections_done"] = [*report.get("sections_done", []), section]
    workdir.write_atomically(out, json.dumps(report, indent=1))
    print(f"[{report['wall_seconds']:.0f} s] {section} done, written: {out}", flush=True)

  report["correctness"] = correctness(shape, gpu)
  print(json.dumps(report["correctness"], indent=1), flush=True)
  save("correctness")
  # The first size, then decoding and the flag sets, then the other (larger) sizes.
  first, *others = shape["sizes"]
  report["train"][first] = train_row(first, shape, gpu, args.rounds, args.steps, peaks)
  print(format_train_row(first, report["train"][first]), flush=True)
  save(f"train {first}")
  report["decoding_beam4"] = decoding(shape, gpu)
  print(f"beam-4 decoding: {report['decoding_beam4']['sentences_per_second']:.1f} sentences/s")
  save("decoding_beam4")
  report["xla_flag_sets"] = {
      name: {"flags": list(flags), "step_ms": flag_set_step_ms(flags, shape, gpu, args.rounds,
                                                               args.steps)}
      for name, flags in (("recommended", gpus.RECOMMENDED_XLA_FLAGS),
                          ("alternative", gpus.ALTERNATIVE_XLA_FLAGS))}
  print(f"XLA flag sets: {json.dumps(report['xla_flag_sets'])}")
  save("xla_flag_sets")
  for size in others:
    report["train"][size] = train_row(size, shape, gpu, args.rounds, args.steps, peaks)
    print(format_train_row(size, report["train"][size]), flush=True)
    save(f"train {size}")


if __name__ == "__main__":
  main()
