"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
# This process compiles hundreds of small programs and runs each a few times: LLVM at -O0 for its
# CPU backend (XLA's HLO passes, and so the numerics, are unchanged) took the suite from 365 to
# 344 s on 2 cores (2026-12-06). Trainer subprocesses run more steps and keep the default.
_SUBPROCESS_XLA_FLAGS = os.environ["XLA_FLAGS"]
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as transformer/__init__.py: no notice
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu (the [tpu] extra) is for AOT compilation

# One persistent compilation cache per pytest process for the trainer subprocesses of
# `helpers.main_command`: each run of the tiny config would otherwise compile the same steps.
_CACHE = tempfile.mkdtemp(prefix="transformer-tests-compilation-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import transformer  # noqa: E402, F401  (quiet JAX start-up with the CUDA plugin installed)
import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.devices()  # the CPU backend reads XLA_FLAGS now, once
os.environ["XLA_FLAGS"] = _SUBPROCESS_XLA_FLAGS

from tests.helpers import SHARED_CACHE_VARIABLE  # noqa: E402

os.environ[SHARED_CACHE_VARIABLE] = _CACHE

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A tfds data_dir per test module (the tiny config prepares its generated task there)."""
  return tmp_path_factory.mktemp("tfds")
