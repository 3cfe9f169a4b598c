"""Export to CTranslate2 and Hugging Face Transformers: the exported models compute what ours do.

CTranslate2 (the `[serve]` extra, in CI): token log-probabilities of its `score_batch` against
ours for post-LN, pre-LN, learned and no positions; greedy and beam outputs of a trained tiny
model identical to ours. Hugging Face (`MarianMTModel` needs PyTorch, which PyPI ships only with
GBs of CUDA libraries, so those tests are marked `torch`, run with `pytest -m torch` where a CPU
torch is installed): logits within 1e-4 and the tokenizer's ids equal to ours.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from transformer import checkpointing, export, inference
from transformer.config import ModelConfig
from transformer.data import number_words, tokenizer as tokenizer_lib
from transformer.export import weights as weights_lib

from transformer.export import to_ctranslate2

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ["one hundred two", "seven thousand three hundred forty-two, nine", "twenty",
           "eight hundred thousand eleven, three"]


@pytest.fixture(scope="module")
def number_tokenizer() -> tokenizer_lib.Tokenizer:
  pairs = [number_words.sentence_pair((n, 3 * n + 7)) for n in range(1, 3000, 7)]
  return tokenizer_lib.train([text for pair in pairs for text in pair], vocab_size=96)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained far enough to translate the generated task, and its export."""
  root = tmp_path_factory.mktemp("export")
  config = helpers.train_tiny(root / "run", root / "tfds", {
      "model.d_model": 64, "model.d_ff": 128, "model.num_heads": 4,
      "model.encoder_layers": 2, "model.decoder_layers": 2,  # learns the task in 200 steps
      "train.num_steps": 200, "train.warmup_steps": 100, "train.eval_every_steps": 200,
      "train.checkpoint_every_steps": 200, "train.log_every_steps": 100})
  print(export.export(config, str(root / "run"), None, "ctranslate2", str(root / "ct2")))
  loaded = checkpointing.load(config, str(root / "run" / "checkpoints"))
  return config, loaded, root


def padded(rows: list[list[int]]) -> np.ndarray:
  width = max(map(len, rows))
  return np.array([row + [0] * (width - len(row)) for row in rows], np.int32)


def our_log_probs(model, params, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
  logits = model.apply({"params": params}, jnp.asarray(sources), jnp.asarray(targets))
  return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))


@pytest.mark.parametrize("changes", [
    {},
    {"normalization": "pre"},
    {"positional_encoding": "learned", "max_len": 64},
    {"positional_encoding": "none", "activation": "gelu", "scan_layers": True},
], ids=["post_ln", "pre_ln", "learned_positions", "no_positions_gelu_scanned"])
def test_ctranslate2_scores_equal_ours(changes, number_tokenizer, tmp_path):
  # 8 embedding rows beyond the SentencePiece model's: kept as placeholders, softmax unchanged.
  config = ModelConfig(vocab_size=number_tokenizer.vocab_size + 8, d_model=32, num_heads=4,
                       d_ff=64, encoder_layers=2, decoder_layers=2, **changes)
  model, params = helpers.init_params(config, seed=3)
  params = jax.tree.map(lambda x: x + 0.05 * np.random.RandomState(0).standard_normal(x.shape)
                        .astype(np.float32), params)  # biases and norms away from 0 and 1
  directory = str(tmp_path / "ct2")
  to_ctranslate2.write(config, weights_lib.from_params(params, config), number_tokenizer,
                       directory, "none")
  targets = [number_words.sentence_pair((n,))[1] for n in (102, 7342, 20, 800011)]
  source_ids = number_tokenizer.encode(SOURCES, "source")
  target_ids = number_tokenizer.encode(targets)
  ours = our_log_probs(model, params, padded(source_ids), padded(target_ids))
  scored = to_ctranslate2.translator(directory).score_batch(
      [number_tokenizer.pieces(ids[:-1]) for ids in source_ids],
      [number_tokenizer.pieces(ids[:-1]) for ids in target_ids])
  for row, (ids, result) in enumerate(zip(target_ids, scored)):
    expected = ours[row, np.arange(len(ids)), ids]  # each token, EOS included
    np.testing.assert_allclose(result.log_probs, expected, atol=2e-4)


def our_translations(loaded, sources: list[str], method: str, alpha: float = 0.6
                     ) -> list[list[int]]:
  options = inference.DecodeOptions(method=method, alpha=alpha)
  ids, _ = inference.translate_ids(loaded.model, loaded.params,
                                   jnp.asarray(padded(loaded.tokenizer.encode(sources, "source"))),
                                   options)
  outputs = []
  for row in np.asarray(ids)[:, 0]:
    row = list(row)
    outputs.append(row[:row.index(1)] if 1 in row else row)
  return outputs


def ct2_translations(directory: str, tokenizer, sources: list[str], beam: int,
                     extra_length: int = 50) -> list[list[int]]:
  """Ids of CTranslate2's outputs (no length normalization), each sentence with our length
  limit: source length + 50 tokens with EOS, so at most that minus one before it."""
  translator = to_ctranslate2.translator(directory)
  lookup = {piece: index for index, piece in
            enumerate(tokenizer.pieces(range(tokenizer.vocab_size)))}
  outputs = []
  for ids in tokenizer.encode(sources, "source"):
    result = translator.translate_batch([tokenizer.pieces(ids[:-1])], beam_size=beam,
                                        length_penalty=0.0,
                                        max_decoding_length=len(ids) + extra_length - 1)
    outputs.append([lookup[piece] for piece in result[0].hypotheses[0]])
  return outputs


def test_trained_model_greedy_outputs_equal_ours(trained):
  # Beam search is not compared: the engines' searches differ (benchmarks/README.md measures
  # how often their outputs agree, and the BLEU of each).
  config, loaded, root = trained
  test_sources = [number_words.sentence_pair((n, 2 * n + 1))[0] for n in range(5, 400, 13)]
  limits = [len(ids) + 50 for ids in loaded.tokenizer.encode(test_sources, "source")]
  ours = our_translations(loaded, test_sources, "greedy")
  ended = [len(output) < limit - 1 for output, limit in zip(ours, limits)]
  # It translates: most outputs end before the limit (how many varies with the CPU: 19 of 31
  # on one machine).
  assert sum(ended) >= 0.5 * len(ours) and min(map(len, ours)) > 3
  assert ct2_translations(str(root / "ct2"), loaded.tokenizer, test_sources, 1) == ours


def test_serving_benchmark_scores_outputs_in_the_beam_search_objective(trained):
  """benchmarks/serving.py's objective equals the score our beam search returns for its own
  finished hypotheses (computed step by step in the search), and prefers them to others."""
  from benchmarks import serving
  _, loaded, _ = trained
  sources = [number_words.sentence_pair((n, 2 * n + 1))[0] for n in range(5, 200, 23)]
  source_ids = serving.padded(loaded.tokenizer.encode(sources, "source"))
  options = inference.DecodeOptions(method="beam", beam_size=4, alpha=0.6, extra_length=50)
  ids, scores = inference.translate_ids(loaded.model, loaded.params, jnp.asarray(source_ids),
                                        options)
  best = [serving.until_eos(row) for row in np.asarray(ids)[:, 0]]
  ended = [tokenizer_lib.EOS_ID in row.tolist() for row in np.asarray(ids)[:, 0]]
  assert sum(ended) >= len(sources) // 2
  recomputed = serving.model_scores(loaded, sources, best, 0.6)
  np.testing.assert_allclose(recomputed[ended], np.asarray(scores)[:, 0][ended], rtol=1e-4)
  assert serving.search_comparison(loaded, sources, best, best, 0.6) == {
      "differing": 0, "ours_scores_at_least_as_high": None}
  worse = [output[:-1] for output in best]  # a hypothesis the search ranked lower
  assert serving.search_comparison(loaded, sources, best, worse, 0.6) == {
      "differing": len(sources), "ours_scores_at_least_as_high": 1.0}


def test_export_directory_holds_the_model_tokenizer_and_provenance(trained):
  config, loaded, root = trained
  files = set(os.listdir(root / "ct2"))
  assert {"model.bin", "config.json", "shared_vocabulary.json", "sentencepiece.model",
          "exported_from.json"} <= files
  assert not [name for name in os.listdir(root) if ".partial-" in name]
  command = [sys.executable, "-m", "transformer.main", "--mode=export",
             "--config=tests/tiny_config.py", f"--workdir={root / 'run'}",
             f"--export.dir={root / 'int8'}", "--export.quantization=int8"]
  printed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert printed.stdout == f"step 200 exported as ctranslate2 (int8) to {root / 'int8'}\n", (
      printed.stderr[-2000:])
  assert os.path.getsize(root / "int8" / "model.bin") < 0.5 * os.path.getsize(
      root / "ct2" / "model.bin")


def test_export_errors_are_one_line_and_leave_nothing(trained, monkeypatch):
  config, loaded, root = trained
  run_dir = str(root / "run")
  with pytest.raises(export.ExportError, match=r"--export.dir=.*ct2 exists and is not empty"):
    export.export(config, run_dir, None, "ctranslate2", str(root / "ct2"))
  with pytest.raises(export.ExportError, match=r"--export.quantization=int3: choose one of"):
    export.export(config, run_dir, None, "ctranslate2", str(root / "q"), quantization="int3")
  with pytest.raises(export.ExportError, match=r"--export.format=onnx: choose one of"):
    export.export(config, run_dir, None, "onnx", str(root / "onnx"))

  def fail_half_way(config, weights, tokenizer, directory, quantization):
    os.makedirs(directory)
    open(os.path.join(directory, "model.bin"), "wb").close()
    raise OSError("disk full")

  monkeypatch.setattr(to_ctranslate2, "write", fail_half_way)
  with pytest.raises(OSError, match="disk full"):
    export.export(config, run_dir, None, "ctranslate2", str(root / "broken"))
  assert not os.path.exists(root / "broken")
  assert not [name for name in os.listdir(root) if ".partial-" in name]


@pytest.mark.parametrize("changes, message", [
    ({"d_k": 4}, r"model.d_k=4, model.d_v=8: .* needs d_k = d_v = d_model / num_heads = 8"),
])
def test_options_the_engines_cannot_express(changes, message, number_tokenizer):
  config = ModelConfig(vocab_size=100, d_model=32, num_heads=4, d_ff=64, **changes)
  with pytest.raises(export.ExportError, match=message):
    to_ctranslate2.check(config, number_tokenizer)


def test_separate_vocabularies_are_refused(number_tokenizer):
  split = tokenizer_lib.SplitTokenizer(number_tokenizer, number_tokenizer)
  with pytest.raises(export.ExportError, match=r"config.tokenizer.vocabularies=separate"):
    to_ctranslate2.check(ModelConfig(vocab_size=200, d_model=32, num_heads=4), split)


def test_interleaved_to_halves_reorders_our_sinusoids_into_marian_s():
  d_model, positions = 16, np.arange(40)
  ours = weights_lib.position_table(ModelConfig(d_model=d_model, num_heads=2), None, 40)
  # Marian's table, from its definition: sin(pos / 10000^(2i/d)) at i, the cosine at d/2 + i.
  rates = 1.0 / np.power(10000.0, 2 * np.arange(d_model // 2) / d_model)
  marian = np.concatenate([np.sin(positions[:, None] * rates), np.cos(positions[:, None] * rates)],
                          axis=1)
  order = weights_lib.interleaved_to_halves(d_model)
  np.testing.assert_allclose(ours[:, order], marian, atol=2e-5)


@pytest.mark.torch
def test_huggingface_logits_and_tokenizer_equal_ours(trained):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  config, loaded, root = trained
  print(export.export(config, str(root / "run"), None, "huggingface", str(root / "hf")))
  marian = transformers.MarianMTModel.from_pretrained(str(root / "hf")).eval()
  tokenizer = transformers.MarianTokenizer.from_pretrained(str(root / "hf"))
  sources = padded(loaded.tokenizer.encode(SOURCES, "source"))
  assert tokenizer(SOURCES, padding=True)["input_ids"] == sources.tolist()
  targets = padded(loaded.tokenizer.encode([number_words.sentence_pair((n,))[1]
                                            for n in (102, 7342, 20, 800011)]))
  ours = np.asarray(loaded.model.apply({"params": loaded.params}, jnp.asarray(sources),
                                       jnp.asarray(targets)))
  shifted = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  with torch.no_grad():
    theirs = marian(input_ids=torch.tensor(sources, dtype=torch.long),
                    attention_mask=torch.tensor(sources != 0),
                    decoder_input_ids=torch.tensor(shifted, dtype=torch.long)).logits.numpy()
  real = targets != 0
  assert np.abs(theirs - ours)[real].max() <= 1e-4
  generated = marian.generate(torch.tensor(sources, dtype=torch.long),
                              attention_mask=torch.tensor(sources != 0), num_beams=1,
                              do_sample=False, max_new_tokens=64)
  texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
  greedy = our_translations(loaded, SOURCES, "greedy")
  assert texts == [loaded.tokenizer.decode(ids) for ids in greedy]


@pytest.mark.torch
def test_huggingface_refuses_pre_ln_and_learned_positions(number_tokenizer):
  pytest.importorskip("torch")
  from transformer.export import to_huggingface  # noqa: PLC0415  (needs torch)
  with pytest.raises(export.ExportError, match=r"model.normalization=pre: .* post-LN only"):
    to_huggingface.check(ModelConfig(vocab_size=100, d_model=32, num_heads=4,
                                     normalization="pre"), number_tokenizer)
  with pytest.raises(export.ExportError, match=r"model.positional_encoding=learned"):
    to_huggingface.check(ModelConfig(vocab_size=100, d_model=32, num_heads=4,
                                     positional_encoding="learned"), number_tokenizer)
