"""ModelConfig validation and presets."""

import pytest

from transformer import config as configs


def test_presets_follow_table_3():
  base, big = configs.base(), configs.big()
  assert (base.d_model, base.num_heads, base.d_ff, base.encoder_layers, base.decoder_layers,
          base.dropout_rate, base.d_k, base.d_v) == (512, 8, 2048, 6, 6, 0.1, 64, 64)
  assert (big.d_model, big.num_heads, big.d_ff, big.dropout_rate, big.d_k) == (
      1024, 16, 4096, 0.3, 64)
  assert base.normalization == "post" and base.positional_encoding == "sinusoidal"


def test_d_k_defaults_and_overrides():
  assert configs.tiny(d_model=32, num_heads=4).d_k == 8
  assert configs.tiny(d_k=16).d_k == 16 and configs.tiny(d_k=16).d_v == 8


@pytest.mark.parametrize("overrides, message", [
    ({"d_model": 30, "num_heads": 4},
     "d_model (30) must be divisible by ModelConfig.num_heads (4)"),
    ({"d_ff": 0}, "ModelConfig.d_ff must be a positive integer"),
    ({"encoder_layers": -1}, "ModelConfig.encoder_layers must be a positive integer"),
    ({"vocab_size": 2.5}, "ModelConfig.vocab_size must be a positive integer"),
    ({"dropout_rate": 1.5}, "ModelConfig.dropout_rate must be in [0, 1)"),
    ({"dropout_rate": -0.1}, "ModelConfig.dropout_rate must be in [0, 1)"),
    ({"normalization": "sandwich"}, "ModelConfig.normalization must be one of post, pre"),
    ({"positional_encoding": "rope"},
     "ModelConfig.positional_encoding must be one of sinusoidal, learned, none"),
    ({"activation": "swish"}, "ModelConfig.activation must be one of relu, gelu"),
    ({"dtype": "float8"}, "ModelConfig.dtype must be one of float32, bfloat16, float16"),
    ({"attention_kernel": "flash"},
     "ModelConfig.attention_kernel must be one of xla, jax, blockwise"),
    ({"attention_kernel": "blockwise", "attention_dropout_rate": 0.1},
     "attention_kernel='blockwise' has no attention dropout"),
    ({"remat_policy": "some"}, "ModelConfig.remat_policy must be one of none, full, dots"),
    ({"target_vocab_size": 10}, "share_embeddings=True needs one vocabulary"),
    ({"attention_kernel": "jax", "d_k": 4}, "attention_kernel='jax' needs d_k == d_v"),
])
def test_bad_config_names_field_and_allowed_values(overrides, message):
  with pytest.raises(ValueError) as error:
    configs.tiny(**overrides)
  assert message in str(error.value)


def test_from_dict_rejects_unknown_fields():
  assert configs.from_dict({"d_model": 16, "num_heads": 2}).d_model == 16
  with pytest.raises(ValueError, match="unknown model field.*d_modle"):
    configs.from_dict({"d_modle": 16})


def test_experiment_config_lists_every_model_field():
  import dataclasses

  from experiments.configs import common
  model = common.base_config().model
  assert set(model) == {f.name for f in dataclasses.fields(configs.ModelConfig)}
  assert configs.from_dict(model.to_dict()) == configs.base(vocab_size=32000)


@pytest.mark.parametrize("name, arg", [("smoke", None), ("multi30k", None), ("wmt14_base", None),
                                       ("wmt14_big", None), ("tatoeba_zh_en", None),
                                       ("tatoeba_zh_en", "en-zh")])
def test_experiment_configs_build_valid_models(name, arg):
  import importlib

  from transformer import steps
  module = importlib.import_module(f"experiments.configs.{name}")
  config = module.get_config() if arg is None else module.get_config(arg)
  steps.validate(config)
  model = configs.from_dict(config.model.to_dict())
  assert model.vocab_size == config.tokenizer.vocab_size
  assert config.data.max_train_length <= config.data.packed_length
  assert config.data.max_eval_length + config.decode.extra_length <= model.max_len


def test_paper_configs_follow_the_paper():
  from experiments.configs import wmt14_base, wmt14_big
  base, big = wmt14_base.get_config(), wmt14_big.get_config()
  assert (base.train.adam_b1, base.train.adam_b2, base.train.adam_eps) == (0.9, 0.98, 1e-9)
  assert base.train.warmup_steps == 4000 and base.train.label_smoothing == 0.1
  assert base.train.num_steps == 100_000 and big.train.num_steps == 300_000
  assert base.data.batch_size * base.data.packed_length == pytest.approx(25_000, rel=0.05)
  assert (base.decode.beam_size, base.decode.alpha) == (4, 0.6)
  assert big.model.dropout_rate == 0.3 and big.eval.num_average == 20
  assert configs.from_dict(big.model.to_dict()).num_params() == configs.big(
      dtype="bfloat16", max_len=512).num_params()
  assert base.data.source_lang == "en" and base.data.target_lang == "de"
