"""BLEU/chrF, and the evaluate, translate, average and attention modes on a trained tiny model."""

import copy
import dataclasses
import io
import json
import os
import queue
import subprocess
import sys
import threading

import jax

import ml_collections
import numpy as np
import pytest

from transformer import attention_maps, bleu_styles, checkpointing, decoding, evaluation, modes, run
from transformer import workdir as workdir_lib
from transformer.data import tokenizer as tokenizer_lib
from transformer.data.corpus import DataError

import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_scores_and_signatures():
  hypotheses = ["the cat sat on the mat", "a dog"]
  perfect = evaluation.score(hypotheses, hypotheses, "de")
  assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
  assert "tok:13a" in perfect["bleu_signature"] and "nrefs:1" in perfect["bleu_signature"]
  worse = evaluation.score(["the cat sat", "a cat"], hypotheses, "de")
  assert worse["bleu"] < 100.0 and worse["chrf"] < 100.0
  assert "tok:zh" in evaluation.score(["我爱你"], ["我爱你"], "zh")["bleu_signature"]
  paper = evaluation.score(hypotheses, hypotheses, "de", "paper")["bleu_signature"]
  assert paper.startswith("moses-tok(de)+compound-split(##AT##)+multi-bleu|")
  assert "tok:none" in paper


def test_paper_style_is_moses_tokens_with_compounds_split_worked_by_hand():
  assert bleu_styles.paper_tokens("Der Zwei-Wege-Test läuft.", "de") == \
      "Der Zwei ##AT##-##AT## Wege ##AT##-##AT## Test läuft ."
  # 8 tokens each; 1-4-gram matches 7/8, 5/7, 4/6, 3/5; equal lengths, no brevity penalty:
  # BLEU = (7/8 * 5/7 * 4/6 * 3/5)^(1/4) = 0.25^(1/4).
  result = evaluation.score(["Der Zwei-Wege-Test lief."], ["Der Zwei-Wege-Test läuft."], "de",
                            "paper")
  assert result["bleu"] == pytest.approx(100 * 0.25**0.25, abs=1e-6)
  # The old approximation (sacreBLEU's intl tokenizer on "##AT##-##AT##") made 11 tokens of each
  # split and scored this pair far higher.
  assert result["bleu"] < 75


def test_multi30k_style_is_lowercased_moses_tokens_worked_by_hand():
  assert bleu_styles.multi30k_tokens("A man, in a RED shirt.", "en") == "a man , in a red shirt ."
  # hyp 7 tokens, ref 8: matches 7/7, 5/6, 3/5, 2/4; brevity penalty exp(1 - 8/7).
  result = evaluation.score(["a man in a red shirt ."], ["A man, in a RED shirt."], "en",
                            "multi30k")
  expected = np.exp(1 - 8 / 7) * (1 * 5 / 6 * 3 / 5 * 2 / 4) ** 0.25
  assert result["bleu"] == pytest.approx(100 * expected, abs=1e-6)
  assert result["bleu_signature"].startswith("moses-punct-norm+moses-tok(en)+lowercase|")
  assert bleu_styles.multi30k_tokens("„Hallo“ – sagt er…", "de") == \
      bleu_styles.multi30k_tokens('"Hallo" - sagt er...', "de")  # punctuation normalised


def test_unknown_bleu_style_is_an_error():
  with pytest.raises(ValueError, match="bleu_style must be one of sacrebleu, paper, multi30k"):
    evaluation.score(["a"], ["a"], "de", "moses")


def test_output_stats_worked_by_hand():
  hypotheses = ["他们吃吃吃吃苹果。", "我不知道。", "you ⁇  ⁇ too", "the the the end"]
  references = ["他们吃苹果。", "我不知道。", "you too", "the"]
  stats = evaluation.output_stats(hypotheses, references)
  # Loops: "吃吃吃吃" holds "吃吃" only twice; "the the the " is "the " three times.
  assert stats["loops"] == 0.25
  assert stats["unknown"] == 0.25
  assert stats["over_twice_reference"] == 0.25  # 15 > 2 * 3 only (9 > 12, 12 > 14 are false)
  assert stats["length_ratio"] == pytest.approx((9 + 5 + 12 + 15) / (6 + 5 + 7 + 3))
  assert evaluation.output_stats(["帮我帮我帮我吗"], ["帮我吗"])["loops"] == 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  config = tiny_config.get_config()
  config.data.data_dir = str(workdir / "tfds")
  # BLEU only at the last evaluation: checkpoints without it must not break "keep the best".
  config.train.update(dict(num_steps=30, checkpoint_every_steps=10, keep_checkpoints=3,
                           best_metric="eval_bleu", best_mode="max", test_at_end=True))
  config.decode.beam_size = 2
  run.train_and_evaluate(config, str(workdir))
  return config, str(workdir)


def test_evaluate_writes_hypotheses_and_reports_bleu(trained):
  config, workdir = trained
  result = modes.evaluate(config, workdir)
  assert result["step"] == 30 and result["sentences"] == 40 and result["split"] == "test"
  assert 0.0 <= result["bleu"] <= 100.0 and "tok:13a" in result["bleu_signature"]
  hypotheses = open(os.path.join(workdir, "eval", "test.step30.beam2.alpha0.6.hyp.txt")
                    ).read().splitlines()
  assert len(hypotheses) == 40
  saved = json.load(open(os.path.join(workdir, "eval", "test.step30.beam2.alpha0.6.json")))
  assert saved["bleu"] == result["bleu"] and saved["decode_seconds"] > 0
  assert set(saved["outputs"]) == {"length_ratio", "loops", "unknown", "over_twice_reference"}


def test_one_decode_scored_in_several_styles(trained):
  config, workdir = trained
  config = copy.deepcopy(config)
  config.eval.extra_bleu_styles = "multi30k, paper"
  result = modes.evaluate(config, workdir)
  hypotheses = open(os.path.join(workdir, "eval", "test.step30.beam2.alpha0.6.hyp.txt")
                    ).read().splitlines()
  config.eval.update(extra_bleu_styles="", bleu_style="multi30k")
  alone = modes.evaluate(config, workdir)  # a second decode, scored in that style only
  assert open(os.path.join(workdir, "eval", "test.step30.beam2.alpha0.6.multi30k.hyp.txt")
              ).read().splitlines() == hypotheses
  assert set(result["extra_bleu"]) == {"multi30k", "paper"}
  assert result["extra_bleu"]["multi30k"] == {"bleu": alone["bleu"],
                                               "bleu_signature": alone["bleu_signature"]}
  assert result["extra_bleu"]["paper"]["bleu_signature"].startswith("moses-tok(")
  config.eval.extra_bleu_styles = "multi30k,moses"
  with pytest.raises(ValueError, match="extra_bleu_styles: unknown BLEU style.*moses"):
    modes.evaluate(config, workdir)


def test_separate_vocabularies_train_evaluate_and_translate(tmp_path):
  config = tiny_config.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.tokenizer.vocabularies = "separate"
  config.train.update(dict(num_steps=10, checkpoint_every_steps=10, eval_every_steps=100))
  run.train_and_evaluate(config, str(tmp_path))
  loaded = checkpointing.load(config, workdir_lib.checkpoints(str(tmp_path)))
  assert isinstance(loaded.tokenizer, tokenizer_lib.SplitTokenizer)
  assert loaded.tokenizer.vocab_size <= config.model.vocab_size
  assert modes.evaluate(config, str(tmp_path))["sentences"] == 40
  (tmp_path / "input.en").write_text("seven\nforty-two\n")
  output = io.StringIO()
  assert modes.translate(config, str(tmp_path), str(tmp_path / "input.en"), output) == 2
  assert len(output.getvalue().splitlines()) == 2


def test_output_names_keep_checkpoints_and_decodings_apart():
  decode = ml_collections.ConfigDict(dict(method="beam", beam_size=4, alpha=0.6))
  assert modes.output_stem("test", "w/checkpoints/", 9, decode) == "test.step9.beam4.alpha0.6"
  assert modes.output_stem("test", "w/averaged", 9, decode) == \
      "test.averaged.step9.beam4.alpha0.6"
  decode.alpha = 1.0
  assert modes.output_stem("test", "w/averaged", 9, decode) == "test.averaged.step9.beam4.alpha1"
  decode.early_stopping = "k_finished"
  assert modes.output_stem("test", "w/averaged", 9, decode) == \
      "test.averaged.step9.beam4.alpha1.k_finished"
  decode.method = "greedy"
  assert modes.output_stem("test", "w/checkpoints", 9, decode) == "test.step9.greedy"
  assert modes.output_stem("test", "w/averaged", 9, decode, "multi30k") == \
      "test.averaged.step9.greedy.multi30k"


def test_evaluate_a_file_pair(trained, tmp_path):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  (tmp_path / "src.en").write_text("seven\ntwelve, one\n")
  (tmp_path / "ref.de").write_text("sieben\nzwölf, eins\n")
  config.eval.update(dict(source_file=str(tmp_path / "src.en"),
                          reference_file=str(tmp_path / "ref.de")))
  assert modes.evaluate(config, workdir)["sentences"] == 2
  (tmp_path / "ref.de").write_text("sieben\n")
  with pytest.raises(DataError, match=r"src.en has 2 lines but .*ref.de has 1"):
    modes.evaluate(config, workdir)


def test_translate_keeps_lines_aligned(trained, tmp_path, capsys):
  config, workdir = trained
  source = tmp_path / "input.en"
  source.write_text("seven\n\n" + "one, " * 200 + "two\nforty-two\n")
  output = io.StringIO()
  assert modes.translate(config, workdir, str(source), output) == 4
  lines = output.getvalue().split("\n")
  assert len(lines) == 5 and lines[1] == "" and lines[4] == ""
  warnings = capsys.readouterr().err
  assert "warning: line 3 has" in warnings and "truncated to" in warnings


def test_translate_nbest_and_bad_input(trained, tmp_path):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.nbest = 2
  source = tmp_path / "input.en"
  source.write_text("seven\nnine\n")
  output = io.StringIO()
  modes.translate(config, workdir, str(source), output)
  rows = [line.split("\t") for line in output.getvalue().splitlines()]
  assert [int(r[0]) for r in rows] == [0, 0, 1, 1]
  assert float(rows[0][1]) >= float(rows[1][1])
  for _, score, _, positional in rows:  # per-token log P; their sum over the length penalty
    logprobs = [float(p) for p in positional.split()]  # is the hypothesis' score
    penalty = float(decoding.length_penalty(np.float32(len(logprobs)), config.decode.alpha))
    rounding = 5e-5 * len(logprobs) / penalty + 5e-5  # each figure is printed to 4 decimals
    assert sum(logprobs) / penalty == pytest.approx(float(score), abs=rounding + 1e-4)
    assert all(p <= 0 for p in logprobs)
  source.write_bytes(b"seven\nbad \xff\n")
  with pytest.raises(DataError, match=r"input.en:2: invalid UTF-8"):
    modes.translate(config, workdir, str(source), io.StringIO())
  config.eval.nbest = 3
  with pytest.raises(ValueError, match=r"nbest \(3\) must not exceed the number of beams \(2\)"):
    modes.translate(config, workdir, str(source), io.StringIO())


def test_no_checkpoint_says_how_to_train_and_a_missing_input_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*: train one first with"):
    modes.translate(tiny_config.get_config(), str(tmp_path), "-", io.StringIO())
  missing = str(tmp_path / "sources.txt")
  with pytest.raises(FileNotFoundError, match=f"^--input={missing}: no such file$"):
    modes.translate(tiny_config.get_config(), str(tmp_path), missing, io.StringIO())


def test_average_writes_a_checkpoint_that_evaluates(trained):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.num_average = 3
  message = modes.average(config, workdir)
  assert "averaged steps [10, 20, 30]" in message
  loaded = [checkpointing.load(config, os.path.join(workdir, "checkpoints"), step)
            for step in (10, 20, 30)]
  averaged = checkpointing.load(config, os.path.join(workdir, "averaged"))
  kernel = lambda item: np.asarray(item.params["encoder"]["layers"]["layer_0"]["feed_forward"]
                                   ["wi"]["kernel"])
  np.testing.assert_allclose(kernel(averaged), np.mean([kernel(x) for x in loaded], axis=0),
                             rtol=1e-6)
  result = modes.evaluate(config, workdir, os.path.join(workdir, "averaged"))
  assert result["step"] == 30
  config.eval.num_average = 2  # a second average of the same newest step replaces the first
  assert "averaged steps [20, 30]" in modes.average(config, workdir)
  np.testing.assert_allclose(kernel(checkpointing.load(config, os.path.join(workdir, "averaged"))),
                             np.mean([kernel(x) for x in loaded[1:]], axis=0), rtol=1e-6)
  config.eval.average_until_step = 25  # an earlier point of the run (quality.py's budget mark)
  assert "averaged steps [10, 20]" in modes.average(config, workdir)
  np.testing.assert_allclose(kernel(checkpointing.load(config, os.path.join(workdir, "averaged"))),
                             np.mean([kernel(x) for x in loaded[:2]], axis=0), rtol=1e-6)
  config.eval.average_until_step = 5
  with pytest.raises(FileNotFoundError, match=r"at or before step 5 \(eval.average_until_step\)"):
    modes.average(config, workdir)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_attention_maps_are_written_and_the_drawn_rows_sum_to_one(trained, monkeypatch,
                                                                   scan_layers):
  config, workdir = trained
  drawn = []
  plot = attention_maps.plot_attention
  monkeypatch.setattr(attention_maps, "plot_attention",
                      lambda layers, *args: drawn.append(layers) or plot(layers, *args))
  if scan_layers:  # the same parameters, stacked as nn.scan stores them
    monkeypatch.setattr(checkpointing, "load", scanned_load(checkpointing.load))
  paths = attention_maps.attention_maps(config, workdir, "three hundred forty-two")
  assert sorted(os.path.basename(p) for p in paths) == [
      "decoder_self_attention.png", "encoder_decoder_attention.png", "encoder_self_attention.png"]
  assert all(os.path.getsize(p) > 1000 for p in paths)
  assert len(drawn) == 3 and all(len(layers) == 2 for layers in drawn)  # layers 0 and -1
  for layers in drawn:
    for layer in layers:
      assert layer.ndim == 3  # heads, queries, keys
      np.testing.assert_allclose(layer.sum(-1), 1.0, rtol=1e-5)


def scanned_load(load):
  """checkpointing.load, returning a scan_layers model with the layers' parameters stacked."""
  def stack(tree):
    layers = tree["layers"]
    names = sorted(layers, key=lambda n: int(n.split("_")[-1]))
    return {**tree, "layers": {"layers": jax.tree.map(lambda *xs: np.stack(xs),
                                                      *[layers[n] for n in names])}}

  def scanned(*args, **kwargs):
    loaded = load(*args, **kwargs)
    params = {**loaded.params, "encoder": stack(loaded.params["encoder"]),
              "decoder": stack(loaded.params["decoder"])}
    model = type(loaded.model)(loaded.model.config.replace(scan_layers=True))
    return dataclasses.replace(loaded, model=model, params=params)
  return scanned




def test_translate_streams_stdin_one_batch_at_a_time(trained):
  config, workdir = trained
  process = subprocess.Popen(
      [sys.executable, "-m", "transformer.main", "--config=tests/tiny_config.py",
       f"--workdir={workdir}", "--mode=translate", "--input=-"], cwd=REPO,
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
  answers: "queue.Queue[str]" = queue.Queue()
  threading.Thread(target=lambda: [answers.put(line) for line in process.stdout],
                   daemon=True).start()
  process.stdin.write("seven\n")
  process.stdin.flush()
  first = answers.get(timeout=240)  # answered while stdin is still open: streaming
  process.stdin.write("\nnine\n")
  process.stdin.close()
  assert process.wait(timeout=240) == 0, process.stderr.read()[-2000:]
  rest = [answers.get(timeout=10) for _ in range(2)]
  assert first.endswith("\n") and rest[0] == "\n" and rest[1].endswith("\n")


def test_line_batches_end_when_no_more_input_is_waiting():
  waiting = iter([True, False, True, True, True])
  batches = list(modes.line_batches(iter("abcdef"), 3, lambda: next(waiting, True)))
  assert batches == [["a", "b"], ["c", "d", "e"], ["f"]]


def test_evaluate_on_another_dataset_than_the_training_one(trained, tmp_path):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "test.en").write_text("seven\nnine\nforty-two\n")
  (corpus / "test.de").write_text("sieben\nneun\nzweiundvierzig\n")
  config.eval.update(dataset="parallel_text", source_dir=str(corpus), split="test")
  result = modes.evaluate(config, workdir)
  assert result["sentences"] == 3 and result["split"] == "test"
  config.eval.split = "test[1:]"  # a slice: its own output file, not the whole split's
  result = modes.evaluate(config, workdir)
  assert result["sentences"] == 2 and result["split"] == "test[1:]"
  stems = sorted(name.split(".step")[0] for name in os.listdir(os.path.join(workdir, "eval"))
                 if name.endswith(".json"))
  assert "test" in stems and "test.1-3" in stems
  config.eval.split = "validation"
  with pytest.raises(DataError, match="config.eval.split: dataset parallel_text has no split "
                                      "'validation'; it has test"):
    modes.evaluate(config, workdir)
