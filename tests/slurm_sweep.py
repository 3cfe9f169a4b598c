"""A two-point sweep of the tiny config for the SLURM array test (`tests/test_slurm.py`)."""


def get_sweep(data_dir: str = "") -> dict:
  """Two points differing in dropout, 6 steps each; `data_dir` keeps tfds data in the test's tmp."""
  fixed = {"train.num_steps": 6, "train.test_at_end": False, "data.data_dir": data_dir}
  return {"name": "slurm_test", "config": "tests/tiny_config.py",
          "points": [{"name": "drop0", "overrides": {**fixed, "model.dropout_rate": 0.0}},
                     {"name": "drop1", "overrides": {**fixed, "model.dropout_rate": 0.1}}]}
