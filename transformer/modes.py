"""The modes that use a trained checkpoint: evaluate, translate (streaming), average.

Each loads a checkpoint from the workdir with the config and tokenizer stored in it, so decoding
always uses the tokenizer the model was trained with.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any, Callable, Iterator, TextIO

import jax
import ml_collections
import numpy as np
from etils import epath

from transformer import bleu_styles, checkpointing, evaluation, inference, sharding, steps
from transformer.data import datasets, inputs, pipeline
from transformer.data.corpus import DataError
from transformer.data.tokenizer import EOS_ID, TokenizerBase
from transformer import workdir as workdir_lib


def _file_eval_set(config: ml_collections.ConfigDict, tokenizer: TokenizerBase) -> inputs.EvalSet:
  """A pair of line-aligned files as an evaluation set."""
  sources = list(read_lines(config.eval.source_file))
  references = list(read_lines(config.eval.reference_file))
  if len(sources) != len(references):
    raise DataError(f"{config.eval.source_file} has {len(sources)} lines but "
                    f"{config.eval.reference_file} has {len(references)}")
  pairs = [{"inputs": source, "targets": reference}
           for source, reference in zip(sources, references)]
  batches, sources, references = pipeline.evaluation_batches(
      pairs, tokenizer, batch_size=config.data.eval_batch_size,
      max_length=config.data.max_eval_length)
  return inputs.EvalSet(batches, sources, references)


def evaluate(config: ml_collections.ConfigDict, workdir: str, directory: str | None = None
             ) -> dict[str, Any]:
  """Decodes a split (or file pair), writes the hypotheses and reports sacreBLEU and chrF."""
  directory = directory or workdir_lib.checkpoints(workdir)
  extra_styles = bleu_styles.parse_list(config.eval.extra_bleu_styles,
                                        "config.eval.extra_bleu_styles")
  loaded = checkpointing.load(config, directory)
  trained = loaded.config
  if config.eval.source_file:
    evaluation_set = _file_eval_set(trained, loaded.tokenizer)
    name = tag = os.path.basename(config.eval.source_file)
  else:
    name = config.eval.split or trained.data.test_split
    if config.eval.get("dataset"):  # e.g. trained on wmt17_translate, tested on wmt14's
      trained.data.update(dataset=config.eval.dataset,
                          source_dir=config.eval.get("source_dir") or trained.data.source_dir)
    builder = datasets.prepare(trained.data)
    try:
      tag = datasets.split_tag(builder, name)
    except DataError as error:
      raise DataError(f"config.eval.split: {error}") from None
    evaluation_set = inputs.eval_set(builder, trained, loaded.tokenizer, name)
  options = inference.DecodeOptions.from_config(trained.decode)
  start = time.perf_counter()
  hypotheses, _ = evaluation.translate_eval_set(loaded.model, loaded.params, evaluation_set,
                                                loaded.tokenizer, options, loaded.mesh)
  decode_seconds = time.perf_counter() - start
  # The same hypotheses scored in the extra styles too: one decode for all of them.
  result = evaluation.score(hypotheses, evaluation_set.references, trained.data.target_lang,
                            config.eval.bleu_style, extra_styles)
  result.update(step=loaded.step, split=name, sentences=len(hypotheses), checkpoint=directory,
                decode=dict(config.decode), decode_seconds=decode_seconds,
                outputs=evaluation.output_stats(hypotheses, evaluation_set.references))
  output_dir = workdir_lib.evaluations(workdir)
  epath.Path(output_dir).mkdir(parents=True, exist_ok=True)
  stem = os.path.join(output_dir, output_stem(tag, directory, loaded.step, config.decode,
                                              config.eval.bleu_style))
  workdir_lib.write_atomically(f"{stem}.hyp.txt", "".join(h + "\n" for h in hypotheses))
  workdir_lib.write_atomically(f"{stem}.json", json.dumps(result, indent=2) + "\n")
  return result


def output_stem(split: str, directory: str, step: int, decode: ml_collections.ConfigDict,
                style: str = "sacrebleu") -> str:
  """`SPLIT[.CHECKPOINTS].stepN.DECODING[.STYLE]`: evaluations of averaged checkpoints, with
  another decoding method (beam size, alpha and a non-exact early stopping included) or another
  BLEU style do not overwrite each other (CHECKPOINTS is left out for `checkpoints/`, STYLE for
  sacrebleu)."""
  source = os.path.basename(os.path.normpath(directory))
  tag = "" if source == workdir_lib.CHECKPOINTS else f".{source}"
  method = (f"beam{decode.beam_size}.alpha{decode.alpha:g}" if decode.method == "beam"
            else decode.method)
  if decode.method == "beam" and decode.get("early_stopping", "exact") != "exact":
    method += f".{decode.early_stopping}"
  return f"{split}{tag}.step{step}.{method}{'' if style == 'sacrebleu' else '.' + style}"


def read_lines(path: str) -> Iterator[str]:
  """Lines of a UTF-8 file (or '-' for stdin) without line ends; invalid UTF-8 names the line."""
  handle = sys.stdin.buffer if path == "-" else open(path, "rb")
  name = "<stdin>" if path == "-" else path
  try:
    for number, raw in enumerate(handle, start=1):
      try:
        yield raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError:
        raise DataError(f"{name}:{number}: invalid UTF-8") from None
  finally:
    if handle is not sys.stdin.buffer:
      handle.close()


def translate(config: ml_collections.ConfigDict, workdir: str, input_path: str,
              output: TextIO, directory: str | None = None) -> int:
  """Translates `input_path` (a file or '-' for stdin) into `output`, streaming, in order.

  Lines are read as they come and translated in batches of what is available (at most
  `config.data.eval_batch_size`, fewer when stdin has nothing more yet, as fairseq-interactive
  does); each batch is written and flushed before the next is read, so large files are never
  held in memory. Empty lines stay empty; lines longer than the model's limit are truncated with
  a warning. With `config.eval.nbest` > 1 each input gives n lines
  `index<TAB>score<TAB>translation<TAB>positional scores` (log P of each token, EOS included).
  Returns the line count.
  """
  if input_path != "-" and not os.path.isfile(input_path):  # before the checkpoint loads
    raise FileNotFoundError(f"--input={input_path}: no such file")
  loaded = checkpointing.load(config, directory or workdir_lib.checkpoints(workdir))
  options = inference.DecodeOptions.from_config(loaded.config.decode)
  nbest = config.eval.nbest
  if nbest > options.num_beams:
    raise ValueError(f"config.eval.nbest ({nbest}) must not exceed the number of beams "
                     f"({options.num_beams})")
  max_source = loaded.config.model.max_len - options.extra_length
  batch_size = loaded.config.data.eval_batch_size
  count = 0
  for number, lines in enumerate(line_batches(read_lines(input_path), batch_size,
                                              input_available(input_path))):
    encoded = [_truncated(ids, max_source, count + row + 1)
               for row, ids in enumerate(loaded.tokenizer.encode(lines, "source"))]
    width = pipeline.bucket_length(max(len(ids) for ids in encoded), max_source)
    batch = np.zeros((batch_size, width), np.int32)
    for row, ids in enumerate(encoded):
      batch[row, :len(ids)] = ids
    inputs_array = sharding.global_batch({"inputs": batch}, loaded.mesh)["inputs"]
    ids, scores = inference.translate_ids(loaded.model, loaded.params, inputs_array, options,
                                          options.batch_rng(number))
    positional = inference.token_logprobs(loaded.model, loaded.params, inputs_array, ids) \
        if nbest > 1 else None
    ids, scores, positional = jax.device_get((ids, scores, positional))
    for row, line in enumerate(lines):
      empty = not line.strip()
      if nbest == 1:
        output.write(("" if empty else loaded.tokenizer.decode(ids[row, 0])) + "\n")
        continue
      for k in range(nbest):
        text = "" if empty else loaded.tokenizer.decode(ids[row, k])
        tokens = " ".join(f"{p:.4f}" for p in positional[row, k][ids[row, k] > 0])
        output.write(f"{count + row}\t{scores[row, k]:.4f}\t{text}\t{tokens}\n")
    output.flush()
    count += len(lines)
  return count


def _truncated(ids: list[int], max_source: int, line_number: int) -> list[int]:
  if len(ids) <= max_source:
    return ids
  print(f"warning: line {line_number} has {len(ids)} tokens; truncated to {max_source}",
        file=sys.stderr)
  return ids[:max_source - 1] + [EOS_ID]


def input_available(path: str) -> Callable[[], bool]:
  """Whether more input can be read without waiting (always, for a file)."""
  if path != "-":
    return lambda: True
  return lambda: bool(select.select([sys.stdin], [], [], 0)[0])


def line_batches(lines: Iterator[str], batch_size: int, available: Callable[[], bool]
                 ) -> Iterator[list[str]]:
  """Groups of at most `batch_size` lines; a group ends early when no more input is waiting."""
  chunk: list[str] = []
  for line in lines:
    chunk.append(line)
    if len(chunk) == batch_size or not available():
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def average(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Averages the parameters of the last `config.eval.num_average` checkpoints (Sec. 6.1), those
  at or before step `config.eval.average_until_step` when it is set (> 0).

  Writes an ordinary checkpoint (step = the newest averaged step) under `workdir/averaged`,
  replacing any earlier average, of any steps (the directory holds the latest one only);
  `--checkpoint_dir=WORKDIR/averaged` evaluates or translates with it.
  """
  directory = workdir_lib.checkpoints(workdir)
  manager = checkpointing.read_only_manager(directory)
  until = config.eval.average_until_step
  chosen = sorted(s for s in manager.all_steps() if until <= 0 or s <= until)
  chosen = chosen[-config.eval.num_average:]
  if not chosen:
    at = f" at or before step {until} (eval.average_until_step)" if until > 0 else ""
    raise FileNotFoundError(f"no checkpoint in {directory}{at} to average")
  loaded = [checkpointing.load(config, directory, step) for step in chosen]
  averaged = jax.tree.map(lambda *p: sum(p) / len(p), *[item.params for item in loaded])
  metadata = checkpointing.restore_metadata(manager, chosen[-1])
  setup = steps.make_setup(loaded[-1].config)
  state, _ = checkpointing.restore(manager, chosen[-1], setup.abstract_state)
  output = os.path.join(workdir, "averaged")
  metadata["averaged_steps"] = chosen
  checkpointing.save_only(output, chosen[-1], state.replace(params=averaged), metadata)
  return f"averaged steps {chosen} into {output}/{chosen[-1]}"
